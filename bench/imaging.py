"""Image generation speed on this machine: denoising steps per second, PyTorch against ONNX, and the
throughput of four concurrent requests batched into one run against one at a time.

    python -m bench.imaging [--shapes tiny,sd15] [--size 128] [--steps 8] [--onnx-shapes tiny]

`tiny` is the test suite's pipeline (tests/diffusers_factory.py, 64x64); `sd15` has Stable Diffusion
1.5's shapes with random weights (about 1 B parameters, fp32), at --size pixels. Runs in-process through
ImageService (the server's own code path, without HTTP). Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from server.config import Settings
from server.imaging import store as image_store
from server.imaging.request import ImageRequest
from server.services import build_services
from server.store.store import Store
from tests.diffusers_factory import write_tiny_pipeline


async def _create(store: Store, name: str, folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): store.import_file(p).digest for p in folder.rglob("*") if p.is_file()}
    async for _ in image_store.create(store, name, files, "", {}, None):
        pass


async def run(args: argparse.Namespace, root: Path) -> None:
    settings = Settings(models_dir=root / "models", data_dir=root / "data", embed_default_model=False,
                        image_batch=4, max_loaded_models=4)
    store = Store(settings.models_dir)
    async with build_services(settings) as s:
        for shapes in args.shapes.split(","):
            folder = write_tiny_pipeline(root / shapes, shapes=shapes)
            await _create(store, shapes, folder)
            size = 64 if shapes == "tiny" else args.size
            models = [(shapes, "pytorch")]
            if shapes in args.onnx_shapes.split(","):
                t0 = time.perf_counter()
                async for _ in s.images.export_onnx(shapes, shapes + "-onnx"):
                    pass
                print(f"{shapes}: ONNX export {time.perf_counter() - t0:.1f} s")
                models.append((shapes + "-onnx", "onnx"))

            def req(model: str, seed: int) -> ImageRequest:
                return ImageRequest(model=model, prompt="a red fox in the snow", steps=args.steps, seed=seed,
                                    width=size, height=size)

            for model, kind in models:
                await s.images.generate_once(req(model, 0))  # load and warm up
                t0 = time.perf_counter()
                for i in range(args.repeat):
                    await s.images.generate_once(req(model, i + 1))
                dt = (time.perf_counter() - t0) / args.repeat
                print(f"{shapes} {kind} {size}x{size}: {args.steps / dt:.2f} steps/s "
                      f"({dt:.2f} s per image of {args.steps} steps, VAE and text encoder included)")
            model = shapes
            t0 = time.perf_counter()
            for i in range(4):
                await s.images.generate_once(req(model, 100 + i))
            serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.gather(*[s.images.generate_once(req(model, 100 + i)) for i in range(4)])
            batched = time.perf_counter() - t0
            print(f"{shapes} pytorch, 4 requests: one at a time {4 / serial:.2f} images/s, "
                  f"batched {4 / batched:.2f} images/s ({serial / batched:.2f}x)")
            for loaded in list(s.scheduler.loaded.values()):
                await s.scheduler.unload(loaded.model.digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,sd15")
    parser.add_argument("--onnx-shapes", default="tiny", help="which shapes to export to ONNX and time")
    parser.add_argument("--size", type=int, default=128, help="image side for sd15 (multiple of 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
