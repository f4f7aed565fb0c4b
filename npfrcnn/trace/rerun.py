"""Run one reference stage on a candidate trace's inputs of that stage (for ``compare``).

``Rerunner(model, candidate, reference).outputs(stage)`` returns the reference model's outputs
of ``stage``'s group computed from the **candidate's** trace of the stages before it:

=====================  =================================================================
group                  computed by the reference from the candidate's
=====================  =================================================================
input                  image (the candidate's ``image`` stage, else the reference's)
body                   input
features               body (when traced), else input
rpn                    features
anchors                feature shapes and the input size
decode, topk, nms,     rpn/objectness, rpn/deltas, anchors (fpn: the level shapes)
proposals
levels, pooled         features, proposals/boxes
head                   pooled (``box_head``), box_head (``head/*``; else pooled)
candidates, final_nms, proposals/boxes, head/cls, head/bbox
detections
=====================  =================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npfrcnn.trace.io import ImageTrace, TraceError
from npfrcnn.trace.schema import C4_LEVELS, FPN_LEVELS, stage_info

__all__ = ["Rerunner"]


class Rerunner:
    def __init__(self, model: Any, candidate: ImageTrace, reference: ImageTrace):
        self.model, self.cand, self.ref = model, candidate, reference
        self.fpn = bool(model.is_fpn)
        self.levels = FPN_LEVELS if self.fpn else C4_LEVELS
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        self._background_last = not self.fpn and not model.config.background_first

    def need(self, name: str) -> np.ndarray:
        if name not in self.cand:
            raise TraceError(f"the candidate has no {name!r}, the input of this stage")
        return self.cand.get(name)

    def outputs(self, stage: str, _cand: ImageTrace | None = None) -> dict[str, np.ndarray]:
        group = stage_info(stage).group
        if group not in self._cache:
            fn = getattr(self, f"_{group}", None)
            if fn is None:
                return {}
            self._cache[group] = fn()
        return self._cache[group]

    # groups ------------------------------------------------------------------------------------

    def _sizes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        m = self.cand.meta
        def pair(v: list[int]) -> tuple[int, int]:
            return int(v[0]), int(v[1])

        return pair(m["image_size"]), pair(m["original_size"]), pair(m["input_size"])

    def _input(self) -> dict[str, np.ndarray]:
        src = self.cand if "image" in self.cand else self.ref
        if "image" not in src:
            raise TraceError("neither trace has the image stage")
        return {"input": self.model.transform(src.get("image")).x}

    def _body(self) -> dict[str, np.ndarray]:
        body = self.model.parts.backbone.body(self.need("input"))
        return {f"body/{i}": b for i, b in enumerate(body)}

    def _features(self) -> dict[str, np.ndarray]:
        if not self.fpn:
            return {"features/0": self.model.features(self.need("input"))}
        if all(f"body/{i}" in self.cand for i in range(4)):
            feats = self.model.parts.backbone.fpn([self.need(f"body/{i}") for i in range(4)])
        else:
            feats = self.model.features(self.need("input"))
        return {f"features/{k}": v for k, v in feats.items()}

    def _feature_dict(self) -> dict[str, np.ndarray]:
        return {lvl: self.need(f"features/{lvl}") for lvl in self.levels}

    def _rpn(self) -> dict[str, np.ndarray]:
        if not self.fpn:
            out = self.model.rpn(self.need("features/0"))
            return {"rpn/objectness/0": out.cls_prob, "rpn/deltas/0": out.bbox_pred}
        out = self.model.rpn(self._feature_dict())
        res: dict[str, np.ndarray] = {}
        for lvl, lo in out.levels.items():
            res[f"rpn/objectness/{lvl}"] = lo.logits
            res[f"rpn/deltas/{lvl}"] = lo.deltas
        return res

    def _rpn_output(self) -> Any:
        if not self.fpn:
            from npfrcnn.rpn import RPNOutput

            f = self.need("features/0")
            return RPNOutput(self.need("rpn/deltas/0"), self.need("rpn/objectness/0"),
                             (int(f.shape[1]), int(f.shape[2])))
        from npfrcnn.modeling.rpn import LevelOutput, MultiLevelRPNOutput

        levels = {}
        for lvl in self.levels:
            f = self.need(f"features/{lvl}")
            levels[lvl] = LevelOutput(self.need(f"rpn/objectness/{lvl}"),
                                      self.need(f"rpn/deltas/{lvl}"),
                                      (int(f.shape[1]), int(f.shape[2])))
        return MultiLevelRPNOutput(levels, self._sizes()[2])

    def _anchors(self) -> dict[str, np.ndarray]:
        if not self.fpn:
            f = self.need("features/0")
            return {"anchors/0": self.model.anchors((int(f.shape[1]), int(f.shape[2])))}
        from npfrcnn.modeling.rpn import LevelOutput, MultiLevelRPNOutput

        empty = np.zeros(0, np.float32)
        levels = {}
        for lvl in self.levels:
            f = self.need(f"features/{lvl}")
            levels[lvl] = LevelOutput(empty, empty, (int(f.shape[1]), int(f.shape[2])))
        anc = self.model.anchors(MultiLevelRPNOutput(levels, (0, 0)), self._sizes()[2])
        return {f"anchors/{k}": v for k, v in anc.items()}

    def _proposals_all(self) -> dict[str, np.ndarray]:
        image_size = self._sizes()[0]
        rpn_out = self._rpn_output()
        if self.fpn:
            anchors = {lvl: self.need(f"anchors/{lvl}") for lvl in self.levels}
            p = self.model.proposals(rpn_out, image_size, anchors)
            return {
                "proposals/decoded": p.decoded, "proposals/topk": p.top_k,
                "proposals/candidates": p.clipped, "proposals/candidate_scores": p.probs,
                "proposals/keep": p.kept[p.nms], "proposals/boxes": p.boxes,
                "proposals/scores": p.scores,
            }
        p = self.model.proposals(rpn_out, image_size, self.need("anchors/0"))
        topk = p.kept[p.top_k]
        cand = p.decoded[topk]
        cfg = self.model.config
        if cfg.rpn_clip_before_nms:
            from npfrcnn import boxes as bx

            cand = bx.clip(cand, image_size, inclusive=cfg.clip_inclusive)
        return {
            "proposals/decoded": p.decoded, "proposals/topk": topk,
            "proposals/candidates": cand,
            "proposals/candidate_scores": rpn_out.cls_prob[topk, 1],
            "proposals/keep": p.nms, "proposals/boxes": p.boxes, "proposals/scores": p.scores,
        }

    _decode = _topk = _proposals_all

    def _nms(self) -> dict[str, np.ndarray]:
        """The filters and NMS on the candidate's own top-n candidates (so that the candidate's
        order of tied candidates is what NMS sees)."""
        boxes = self.need("proposals/candidates")
        scores = self.need("proposals/candidate_scores")
        topk = self.need("proposals/topk")
        if self.fpn:
            sizes = []
            for lvl in self.levels:
                f = self.need(f"features/{lvl}")
                sizes.append(int(f.shape[1]) * int(f.shape[2]) * self.model.config.num_anchors)
            levels = np.searchsorted(np.cumsum(sizes), topk, side="right").astype(np.int64)
            kept, sel = self.model.parts.rpn.select(boxes, scores, levels)
            keep = kept[sel]
            final = keep[: self.model.config.rpn_post_nms_top_n]
        else:
            from npfrcnn import boxes as bx
            from npfrcnn import ops

            cfg = self.model.config
            keep = np.asarray(ops.nms(bx.to_yxyx(boxes), scores, cfg.rpn_nms_threshold,
                                      cfg.rpn_post_nms_top_n, backend=self.model.backend),
                              dtype=np.int64)
            final = keep
        return {"proposals/keep": keep, "proposals/boxes": boxes[final],
                "proposals/scores": scores[final]}

    _proposals = _nms

    def _pooled(self) -> dict[str, np.ndarray]:
        feats: Any = self._feature_dict() if self.fpn else self.need("features/0")
        pooled = self.model.pool_rois(feats, self.need("proposals/boxes"), self._sizes()[0])
        if self.fpn:
            return {"pooled": pooled.features, "roi_levels": pooled.levels}
        return {"pooled": pooled}

    _levels = _pooled

    def _head(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "pooled" in self.cand:
            out["box_head"] = self.model.parts.box_head(self.need("pooled"))
        rep = self.need("box_head") if "box_head" in self.cand else out.get("box_head")
        if rep is None:
            raise TraceError("the candidate has neither 'box_head' nor 'pooled'")
        bbox, cls = self.model.parts.predictor(rep)
        if self._background_last:  # the canonical form has the background first
            cls = np.roll(cls, 1, axis=1)
        out["head/cls"], out["head/bbox"] = cls, bbox
        return out

    def _detections_all(self) -> dict[str, np.ndarray]:
        image_size, original, _ = self._sizes()
        boxes = self.need("proposals/boxes")
        bbox, cls = self.need("head/bbox"), self.need("head/cls")
        if self._background_last:
            cls = np.roll(cls, -1, axis=1)
        out: dict[str, np.ndarray] = {}
        if self.fpn:
            post = self.model.parts.postprocess(boxes, bbox, cls, image_size)
            out.update({
                "detections/candidates": post.candidate_boxes,
                "detections/candidate_scores": post.candidate_scores,
                "detections/candidate_labels": post.candidate_labels - 1,
                "detections/keep": post.nms,
            })
        dets = self.model.detections(boxes, bbox, cls, image_size, original_size=original)
        out.update({
            "detections/boxes": dets.boxes, "detections/scores": dets.scores,
            "detections/labels": dets.labels,
        })
        return out

    _candidates = _final_nms = _detections = _detections_all
