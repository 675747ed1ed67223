"""Manifest counts: what was written per source/split, and why every other input was not.

Each accounted quantity is ``{"total", "written", "skipped": {reason: n}}`` with ``total == written +
sum(skipped)`` (`shards.verify` checks this generically). Plan-time facts come from `pipeline.plan` records;
write-time facts (images that failed to decode, boxes with no area in the image) from the per-shard records.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from pipeline.plan import ShardPlan, Skip, SourcePlan


class WriteResults:
    """Write-time outcomes gathered from all shard records."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.failed: dict[str, list[tuple[int, str, str, str]]] = {}
        self.converted: dict[str, str] = {}
        self.rescaled: set[str] = set()
        self.clipped: set[tuple[str, int]] = set()
        for rec in records:
            for key, fails in rec["failed"].items():
                self.failed[key] = [tuple(f) for f in fails]
            self.converted.update({path: reason for path, reason in rec["converted"]})
            self.rescaled.update(rec["rescaled"])
            self.clipped.update((k, r) for k, r in rec["clipped"])

    def reason(self, key: str, role: int | None = None) -> str | None:
        """First failure code of a sample (optionally only failures blamed on one role)."""
        for r, _, code, _ in self.failed.get(key, ()):
            if role is None or r == role:
                return code
        return None


def _quantity(total: int, written: int, skipped: Counter) -> dict[str, Any]:
    assert total == written + sum(skipped.values()), (total, written, skipped)
    return {"total": total, "written": written, "skipped": dict(sorted(skipped.items()))}


def _failure_skips(res: WriteResults, keys: set[str], where: dict[tuple[str, int], str]) -> list[Skip]:
    """One entry per failed image (deduplicated) or per box that has no area in its image."""
    out: dict[tuple[str, str], Skip] = {}
    for key in sorted(keys & res.failed.keys()):
        for role, path, code, detail in res.failed[key]:
            if code == "box_outside_image":  # a box, not the image, is at fault: name the object / line
                path = where.get((key, role), path)
            out.setdefault((path, code), Skip(path, f"{code}: {detail}"))
    return list(out.values())


def imagenet_accounting(plan: SourcePlan, res: WriteResults, written: set[str]) -> tuple[dict, dict, list[Skip]]:
    """(counts per split, accounting, extra skipped entries) for ImageNet DET."""
    xml_skipped: Counter = Counter()
    obj_skipped: Counter = Counter()
    xml_written = obj_total = obj_written = 0
    skips: list[Skip] = []
    where: dict[tuple[str, int], str] = {}
    planned: set[str] = set()
    for rec in plan.xmls:
        obj_total += len(rec.objects)
        kept_written = 0
        first_fail: str | None = None
        for index, drop, key in rec.objects:
            if drop is not None:
                obj_skipped[drop] += 1
                if drop != "too_large":  # too_large is the rule's normal filter (~half of DET): counted, not listed
                    skips.append(Skip(f"{rec.rel}#object{index}", f"{drop}: {rec.drop_details[index]}"))
            elif key is None:
                obj_skipped["image_skipped"] += 1
            elif key in written:
                obj_written += 1
                kept_written += 1
            else:
                planned.add(key)
                where[(key, 0)] = f"{rec.rel}#object{index}"
                code = res.reason(key)
                first_fail = first_fail or code
                obj_skipped["box_outside_image" if code == "box_outside_image" else "image_skipped"] += 1
        if rec.error is not None:
            xml_skipped[rec.error.split(":")[0]] += 1
        elif kept_written:
            xml_written += 1
        else:
            xml_skipped[first_fail or "no_kept_object"] += 1
    skips += _failure_skips(res, planned, where)
    n_extra = sum(n for _, n in plan.extra_folders)  # negative-only XMLs the authors never read: skipped, counted
    if n_extra:
        xml_skipped["extra_folder"] += n_extra
    accounting = {
        "xml_files": _quantity(len(plan.xmls) + n_extra, xml_written, xml_skipped),
        "objects": _quantity(obj_total, obj_written, obj_skipped),
        "extra_folders": [{"path": p, "xml_files": n} for p, n in plan.extra_folders],
    }
    counts = {"train": {"samples": obj_written, "images": xml_written, "objects": obj_written}} if plan.xmls else {}
    return counts, accounting, skips


def alov_accounting(plan: SourcePlan, res: WriteResults, written: set[str]) -> tuple[dict, dict, list[Skip]]:
    """(counts per split, accounting, extra skipped entries) for ALOV300++."""
    vid_skipped: Counter = Counter()
    line_skipped: Counter = Counter()
    pair_skipped: Counter = Counter()
    vid_written = line_total = line_written = pair_total = pair_written = 0
    per_split: dict[str, dict[str, set]] = defaultdict(lambda: {"images": set(), "objects": set(), "pairs": set()})
    skips: list[Skip] = []
    where: dict[tuple[str, int], str] = {}
    planned: set[str] = set()
    sample_images = {s.key: s.images for s in plan.samples}
    for rec in plan.videos:
        line_total += len(rec.lines)
        if rec.error in ("missing_frames_dir", "too_few_annotations"):
            n_pairs = max(len(rec.lines) - 1, 0)
            pair_total += n_pairs
            if n_pairs:
                pair_skipped[rec.error] += n_pairs
        own: dict[int, str | None] = {i: reason for i, (_, reason) in enumerate(rec.lines)}
        used: set[int] = set()
        for i, j, key in rec.pairs:
            pair_total += 1
            if key is None:
                pair_skipped[own[i] or own[j] or "unknown"] += 1
            elif key in written:
                pair_written += 1
                used.update((i, j))
                stats = per_split[rec.split]
                stats["pairs"].add(key)
                stats["images"].update(img.rel for img in sample_images[key])
                stats["objects"].update(((rec.rel, i), (rec.rel, j)))
            else:
                planned.add(key)
                where[(key, 0)] = f"{rec.rel}:{rec.lines[i][0]}"
                where[(key, 1)] = f"{rec.rel}:{rec.lines[j][0]}"
                pair_skipped[res.reason(key) or "unknown"] += 1
                for role, line in ((0, i), (1, j)):
                    code = res.reason(key, role)
                    if code and own[line] is None:
                        own[line] = code
        for i, (line_no, _) in enumerate(rec.lines):
            if i in used:
                line_written += 1
            else:
                reason = own[i] or "no_pair_written"
                line_skipped[reason] += 1
                if reason == "no_pair_written":
                    skips.append(Skip(f"{rec.rel}:{line_no}", "no_pair_written: no usable neighbouring line"))
        if rec.error is not None:
            vid_skipped[rec.error] += 1
        elif used:
            vid_written += 1
        else:
            vid_skipped["no_pair_written"] += 1
    skips += _failure_skips(res, planned, where)
    accounting = {
        "videos": _quantity(len(plan.videos), vid_written, vid_skipped),
        "annotations": _quantity(line_total, line_written, line_skipped),
        "pairs": _quantity(pair_total, pair_written, pair_skipped),
    }
    counts = {
        split: {
            "samples": len(st["pairs"]),
            "images": len(st["images"]),
            "objects": len(st["objects"]),
            "pairs": len(st["pairs"]),
        }
        for split, st in sorted(per_split.items())
    }
    return counts, accounting, skips


def assemble(plans: list[SourcePlan], shards: list[ShardPlan], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``counts``, ``accounting``, ``skipped``, ``warnings`` and ``reencoded`` sections."""
    res = WriteResults([records[s.name] for s in shards])
    all_keys = {s.key for sh in shards for s in sh.samples}
    written = all_keys - res.failed.keys()
    counts: dict[str, Any] = {}
    accounting: dict[str, Any] = {}
    skipped: list[Skip] = []
    warnings: list[Skip] = []
    for plan in plans:
        fn = imagenet_accounting if plan.source == "imagenet" else alov_accounting
        c, acc, extra = fn(plan, res, written)
        acc["notes"] = _notes(plan, res, written)
        counts[plan.source] = c
        accounting[plan.source] = acc
        skipped += plan.skipped + extra
        warnings += plan.warnings
    return {
        "counts": counts,
        "accounting": accounting,
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "warnings": [{"path": s.path, "reason": s.reason} for s in warnings],
        "reencoded": [{"path": p, "reason": r} for p, r in sorted(res.converted.items())],
    }


def _notes(plan: SourcePlan, res: WriteResults, written: set[str]) -> dict[str, Any]:
    """Changes applied to written data: rescaled images, clipped boxes, converted images (by reason)."""
    keys = {s.key for s in plan.samples}
    images = {img.rel for s in plan.samples if s.key in written for img in s.images}
    rescaled = {s.images[-1].rel for s in plan.samples if s.key in res.rescaled and s.key in written}
    return {
        "images_rescaled": len(rescaled),
        "boxes_clipped": sum(1 for k, _ in res.clipped if k in keys and k in written),
        "images_converted": dict(sorted(Counter(r for p, r in res.converted.items() if p in images).items())),
    }
