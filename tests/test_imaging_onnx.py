"""ONNX: a tiny pipeline exported to ONNX into the store (a LoRA fused before export) and served on
onnxruntime by the same image service; the same seed gives an image close to PyTorch's."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from server.config import Settings
from server.errors import BadRequest
from server.imaging import store as image_store
from server.imaging.request import ImageRequest
from server.services import build_services
from server.store.store import Store
from tests.diffusers_factory import write_tiny_lora, write_tiny_pipeline

pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

# measured 89 dB (max difference 1 level of 255) for the tiny pipeline on this CPU; fp32 ONNX kernels
# differ from PyTorch's in the last bits, and 4 steps of DPM++ 2M do not amplify that much
MIN_PSNR = 40.0


def psnr(a: bytes, b: bytes) -> float:
    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).astype(float) for d in (a, b))
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


async def _create(store: Store, name: str, folder) -> None:
    files = {p.relative_to(folder).as_posix(): store.import_file(p).digest for p in folder.rglob("*") if p.is_file()}
    async for _ in image_store.create(store, name, files, "", {}, None):
        pass


def test_onnx_export_serves_close_to_pytorch_and_fuses_lora(tmp_path):
    pipe = write_tiny_pipeline(tmp_path / "pipe")
    lora = write_tiny_lora(pipe, tmp_path / "lora" / "style.safetensors")
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", embed_default_model=False)

    async def main() -> None:
        store = Store(settings.models_dir)
        await _create(store, "tiny-sd", pipe)
        async for _ in image_store.create(store, "tiny-style", {}, "tiny-sd",
                                          {"style.safetensors": store.import_file(lora).digest}, None):
            pass
        async with build_services(settings) as s:
            statuses = [x["status"] async for x in s.images.export_onnx("tiny-sd", "tiny-sd-onnx")]
            assert statuses[0] == "exporting to ONNX" and statuses[-1] == "success"
            async for _ in s.images.export_onnx("tiny-sd", "tiny-style-onnx", [("tiny-style", 1.0)]):
                pass
            assert s.images.model("tiny-sd-onnx").details()["format"] == "onnx"

            def req(model, **kw):
                return ImageRequest(model=model, prompt="a red cat", steps=4, seed=5, **kw)

            torch_img = (await s.images.generate_once(req("tiny-sd"))).images[0].data
            onnx_img = (await s.images.generate_once(req("tiny-sd-onnx"))).images[0].data
            assert Image.open(io.BytesIO(onnx_img)).size == (64, 64)
            value = psnr(torch_img, onnx_img)
            print(f"PSNR PyTorch vs ONNX: {value:.1f} dB")
            assert value >= MIN_PSNR
            styled = (await s.images.generate_once(req("tiny-sd", adapters=[("tiny-style", 1.0)]))).images[0].data
            fused = (await s.images.generate_once(req("tiny-style-onnx"))).images[0].data
            assert psnr(styled, fused) >= MIN_PSNR
            assert psnr(torch_img, fused) < MIN_PSNR  # the fused LoRA is really in the exported weights
            with pytest.raises(BadRequest, match="fused"):
                await s.images.generate_once(req("tiny-sd-onnx", adapters=[("tiny-style", 1.0)]))
            with pytest.raises(BadRequest, match="text only"):
                png = io.BytesIO()
                Image.new("RGB", (64, 64)).save(png, format="PNG")
                await s.images.generate_once(req("tiny-sd-onnx", image=png.getvalue()))

    asyncio.run(main())
