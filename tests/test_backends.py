"""The devices llama.cpp sees, as logged at startup."""

from __future__ import annotations

import re

from server.engine.llama import describe_backends, supports_gpu

LINE = re.compile(r"^(?P<name>\S+): .* \((?P<kind>CPU|GPU|iGPU|accelerator|device), "
                  r"free \d+\.\d GiB / total \d+\.\d GiB\)$")


def test_describe_backends_lists_the_cpu():
    lines = describe_backends()
    kinds = [LINE.match(line).group("kind") for line in lines]  # every line has the documented shape
    assert "CPU" in kinds
    # a CPU-only build (as CI and this machine have) offloads nothing; a CUDA build lists its GPUs
    assert supports_gpu() == any(k in ("GPU", "iGPU") for k in kinds)


def test_startup_logs_the_devices(corral_server):
    log = corral_server.log_text()
    assert re.search(r"device CPU: .*\(CPU, free", log)
    assert "GPU offload: " + ("available" if supports_gpu() else "not available") in log
