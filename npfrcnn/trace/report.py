"""``npfrcnn compare --report``: one self-contained HTML page (images inline as PNG data URIs).

Per image: the verdict, the table of :mod:`npfrcnn.trace.compare` (rows out of tolerance in
red, re-run verdicts named), a heatmap per image-like stage (``input``, ``body/*``,
``features/*``) of where the error is (``max over channels |candidate - reference|``, black = 0,
white = the larger of the stage's largest error and its tolerance, both printed under it: a
stage within tolerance stays dark), and the detections of both traces drawn over the image.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

import numpy as np

from npfrcnn.trace.compare import Comparison, ImageComparison, table_rows, verdict
from npfrcnn.trace.io import ImageTrace, Trace

__all__ = ["write_report", "heatmap_png", "render"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;font-family:ui-monospace,monospace}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.fail{background:#fdd} tr.rounding{background:#ffd} tr.nt{color:#999}
.maps{display:flex;flex-wrap:wrap;gap:12px} .maps figure{margin:0}
figcaption{font-size:12px;font-family:ui-monospace,monospace}
.verdict{font-weight:bold}
"""


def _png(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap_png(err: np.ndarray, tol: float = 0.0, max_side: int = 320) -> tuple[str, float]:
    """A black-red-yellow-white PNG data URI of a 2-d error map, and the error that maps to
    white: the larger of the map's largest error and ``tol`` (so a map within tolerance stays
    dark, and the bright spots of one out of tolerance are where the departure is)."""
    from PIL import Image

    e = np.asarray(err, dtype=np.float64)
    finite = np.isfinite(e)
    top = max(float(e[finite].max()) if finite.any() else 0.0, tol)
    v = np.zeros_like(e) if top <= 0 else np.clip(np.where(finite, e, top) / top, 0, 1)
    # black -> red -> yellow -> white
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)],
                   axis=-1)
    img = Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB")
    scale = max(1, max_side // max(img.size))
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    elif max(img.size) > max_side:
        f = max_side / max(img.size)
        img = img.resize((max(1, int(img.size[0] * f)), max(1, int(img.size[1] * f))),
                         Image.Resampling.BOX)
    return _png(img), top


def _detections_png(trace: ImageTrace, image: np.ndarray, classes: list[str]) -> str | None:
    from npfrcnn.draw import draw_detections

    if "detections/boxes" not in trace:
        return None
    boxes = trace.get("detections/boxes")
    scores = trace.get("detections/scores") if "detections/scores" in trace else np.ones(
        len(boxes), np.float32)
    labels = trace.get("detections/labels") if "detections/labels" in trace else np.zeros(
        len(boxes), np.int64)
    pic = draw_detections(image, boxes, labels, scores, classes)
    if max(pic.size) > 800:
        f = 800 / max(pic.size)
        pic = pic.resize((int(pic.size[0] * f), int(pic.size[1] * f)))
    return _png(pic)


def _image_of(ref: ImageTrace, cand: ImageTrace) -> np.ndarray:
    for t in (ref, cand):
        if "image" in t:
            return t.get("image")
    h, w = ref.meta["original_size"]
    return np.full((int(h), int(w), 3), 255, np.uint8)


def _row_class(r: Any) -> str:
    if r.status == "fail":
        return "rounding" if r.verdict == "rounding" else "fail"
    return "nt" if r.status in ("not traced", "not in reference") else ""


def _image_section(im: ImageComparison, ref: ImageTrace, cand: ImageTrace,
                   classes: list[str]) -> str:
    e = html.escape
    out = [f"<h2>image {im.index}{' — ' + e(im.name) if im.name else ''}</h2>",
           f"<p class=verdict>{e(verdict(im))}</p>", "<table>"]
    rows = table_rows(im)
    out.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0] + ["note"]) + "</tr>")
    for r, cells in zip(im.rows, rows[1:], strict=True):
        note = r.note + (f" | re-run: {r.rerun.note}" if r.rerun is not None and r.rerun.note
                         else "")
        out.append(f"<tr class='{_row_class(r)}'>" + "".join(
            f"<td>{e(c)}</td>" for c in cells + [note]) + "</tr>")
    out.append("</table>")
    if im.error_maps:
        out.append("<h3>where the error is (max over channels |candidate − reference|)</h3>"
                   "<div class=maps>")
        for name, (err, tol) in im.error_maps.items():
            uri, top = heatmap_png(err, tol)
            out.append(f"<figure><img src='{uri}' alt='{e(name)}'><figcaption>{e(name)} "
                       f"{err.shape[0]}x{err.shape[1]}: white = {top:.3g} (tolerance "
                       f"{tol:.3g})</figcaption></figure>")
        out.append("</div>")
    image = _image_of(ref, cand)
    pics = [(who, t, _detections_png(t, image, classes)) for who, t in
            (("reference", ref), ("candidate", cand))]
    if any(uri for _, _, uri in pics):
        out.append("<h3>detections</h3><div class=maps>")
        for who, t, pic in pics:
            if pic:
                n = len(t.get("detections/boxes"))
                out.append(f"<figure><img src='{pic}' alt='{who}'><figcaption>{who}: {n} "
                           "detections</figcaption></figure>")
        out.append("</div>")
    return "\n".join(out)


def render(cmp: Comparison, ref: Trace, cand: Trace) -> str:
    """The report as an HTML string."""
    e = html.escape
    classes = list(ref.meta.get("classes") or [f"class_{i}" for i in
                                                range(int(ref.meta["num_classes"]))])
    head = [
        "<!doctype html><html><head><meta charset='utf-8'><title>npfrcnn compare</title>",
        f"<style>{_CSS}</style></head><body><h1>npfrcnn compare</h1>",
        f"<p>reference: <code>{e(cmp.reference)}</code> ({e(str(ref.meta.get('producer')))})"
        f"<br>candidate: <code>{e(cmp.candidate)}</code> "
        f"({e(str(cand.meta.get('producer')))})<br>tolerance: max abs error ≤ {cmp.atol:g} + "
        f"{cmp.rtol:g} × the stage's scale (max |reference|)</p>",
        "<p class=verdict>" + ("every stage of every image is within tolerance" if cmp.ok
                               else "some stage is out of tolerance") + "</p>",
    ]
    head += [f"<p>note: {e(n)}</p>" for n in cmp.notes]
    body = [_image_section(im, ref.images[im.index], cand.images[im.index], classes)
            for im in cmp.images]
    return "\n".join(head + body + ["</body></html>"])


def write_report(cmp: Comparison, ref: Trace, cand: Trace,
                 path: str | os.PathLike[str]) -> None:
    """Write :func:`render`'s page to ``path`` atomically."""
    from npfrcnn._io import atomic_write

    text = render(cmp, ref, cand)
    with atomic_write(path) as f:
        f.write(text)
