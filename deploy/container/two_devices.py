"""make test-arm64's second device: one small pool, each device's own frontier of it.

``pool SRC DST``: a pool small enough to profile under emulation (where one inference takes
seconds): from the store at SRC, the int8 variant with the least compute, its fp32 twin, the
full-depth int8 and fp32 variants with the least compute and the subnet with the least, with the
reference set cut to its first ``REFERENCE_IMAGES`` images (each int8 check cut alike) and the
store's recorded answers. A valid store, so both devices load it as they would the default one.
The full-depth int8 variant is more accurate than the cheapest subnet's fp32 twin and, wherever
int8 runs faster than fp32, faster too: that twin is left out as dominated on at least one device.

``check NAME=POOL.json ...``: each device's ``GET /models?pool=true`` side by side, and a check
that what each serves is on the frontier it measured (by ``frontier_ms``): of two it serves,
neither beats the other (``service.core.frontier.beats``); each candidate left out as dominated
names one it serves that beats it; and some device left one out as dominated (else the check
proved nothing).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from model_store.reference import reference_images, write_images
from model_store.store import open_store
from service.core.frontier import Point, beats

REFERENCE_IMAGES = 8


def pool(src: Path, dst: Path) -> None:
    manifest = json.loads((src / "manifest.json").read_text())
    variants = manifest["variants"]

    def least(candidates: list[dict]) -> dict | None:
        return min(candidates, key=lambda v: (v["macs"] or 0, v["name"]), default=None)

    int8 = least([v for v in variants if v["precision"] == "int8" and v.get("int8_check")])
    twin = next(v for v in variants if int8 and v["name"] == int8["int8_check"]["twin"])
    fp32, full_int8 = (
        least([v for v in variants if v["precision"] == precision and not v.get("subnet")])
        for precision in ("fp32", "int8")
    )
    subnet = least([v for v in variants if v.get("subnet")])
    chosen = {v["name"]: v for v in (int8, twin, fp32, full_int8, subnet) if v is not None}
    dst.mkdir(parents=True)
    images = reference_images(open_store(src))[:REFERENCE_IMAGES]
    manifest["reference"] = write_images(dst, images).model_dump(mode="json")
    for v in chosen.values():
        for file in (v["file"], (v.get("weights") or {}).get("file")):
            if file and not (dst / file).exists():
                shutil.copyfile(src / file, dst / file)
        if v.get("int8_check"):
            for answers in ("twin_answers", "answers"):
                v["int8_check"][answers] = v["int8_check"][answers][: len(images)]
    manifest["variants"] = list(chosen.values())
    if manifest.get("answers"):  # each server plans its cascades from them
        shutil.copyfile(src / manifest["answers"]["file"], dst / manifest["answers"]["file"])
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for path in (dst, *dst.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    print(", ".join(chosen))


def check(pools: dict[str, list[dict]]) -> int:
    names = sorted({v["name"] for listed in pools.values() for v in listed})
    by_device = {device: {v["name"]: v for v in listed} for device, listed in pools.items()}
    print(f"{'candidate':26}" + "".join(f"{device:>44}" for device in pools))
    for name in names:
        cells = []
        for device in pools:
            v = by_device[device][name]
            ms = "-" if v["frontier_ms"] is None else f"{v['frontier_ms']:.1f} ms"
            cells.append(f"{'served' if v['served'] else v['reason']:>30} {ms:>13}")
        print(f"{name:26}" + "".join(cells))
    failures = []
    for device, listed in by_device.items():
        # A variant of unknown accuracy is always served and never dominates.
        measured = {
            n: Point(v["top1"], v["frontier_ms"] / 1000)
            for n, v in listed.items()
            if v["frontier_ms"] is not None and v["top1"] is not None
        }
        kept = [n for n in measured if listed[n]["served"] or listed[n]["reason"] == "frontier_size"]
        for a in kept:
            failures.extend(
                f"{device}: serves {b} beside {a}, which beats it"
                for b in kept
                if a != b and beats(measured[a], measured[b])
            )
        for name, v in listed.items():
            if v["served"] and v["top1"] is not None and name not in measured:
                failures.append(f"{device}: serves {name}, which it did not measure")
            if v.get("reason") == "dominated":
                by = str(v["detail"]).split(" is ")[0]
                if by not in kept or not beats(measured[by], measured[name]):
                    failures.append(f"{device}: left out {name} as dominated by {by}, which does not beat it")
        print(f"{device} serves: {', '.join(n for n, v in listed.items() if v['served'])}")
    if not any(v.get("reason") == "dominated" for listed in pools.values() for v in listed):
        failures.append("no device left a candidate out as dominated: the pool tests nothing")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        pool(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        files = dict(arg.split("=", 1) for arg in sys.argv[2:])
        sys.exit(check({device: json.loads(Path(f).read_text())["variants"] for device, f in files.items()}))
