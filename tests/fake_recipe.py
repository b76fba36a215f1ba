"""A stand-in recipe for testing the recipe runner (instant; fails on request)."""

from dataclasses import dataclass

from archbench.store import RunDir


@dataclass(frozen=True)
class FakeConfig:
    teacher: str = "default"
    steps: int = 3
    fail: bool = False


def run(config: FakeConfig, out_dir, progress=None) -> dict:
    if config.fail:
        raise RuntimeError("asked to fail")
    rd = RunDir(out_dir).create()
    for model in ("teacher", "student"):
        rd.append({"key": model, "model": model, "status": "ok", "bits_per_byte": 2.0 + (model == "student"), "steps": config.steps})
    return {"steps": config.steps}
