#!/usr/bin/env python3
"""Compiles our run-time CUDA kernels the way llama-server does on a GPU, without a GPU.

llama-server compiles `server/src/kv_cache/paged_attention.cu` with NVRTC when it first needs it (no CUDA
headers, NVRTC's default options: see kv_cache/cuda.rs). This script loads NVIDIA's libnvrtc (from the
nvidia-cuda-nvrtc wheel; no driver needed), compiles each file with the same options, fails on any error or
warning, then assembles the PTX for the GPU we target with ptxas and checks every kernel the server launches
is there.

usage: nvrtc-check.py LIBNVRTC PTXAS SM FILE.cu KERNEL...
"""

import ctypes
import re
import subprocess
import sys
import tempfile


def check(lib, call, *args):
    rc = getattr(lib, call)(*args)
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"{call}: {lib.nvrtcGetErrorString(rc).decode()}")


def compile_ptx(lib, path):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    check(lib, "nvrtcCreateProgram", ctypes.byref(prog), src, path.encode(), 0, None, None)
    try:
        rc = lib.nvrtcCompileProgram(prog, 0, None)  # no options: as kv_cache/cuda.rs compiles it
        size = ctypes.c_size_t()
        check(lib, "nvrtcGetProgramLogSize", prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        check(lib, "nvrtcGetProgramLog", prog, log)
        text = log.value.decode(errors="replace").strip()
        if rc != 0 or text:
            print(f"nvrtc-check: {path} does not compile cleanly under NVRTC:\n{text}", file=sys.stderr)
            sys.exit(1)
        check(lib, "nvrtcGetPTXSize", prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        check(lib, "nvrtcGetPTX", prog, ptx)
        return ptx.value.decode()
    finally:
        check(lib, "nvrtcDestroyProgram", ctypes.byref(prog))


def main():
    if len(sys.argv) < 6:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    libpath, ptxas, sm, path, kernels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    lib = ctypes.CDLL(libpath)
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, "nvrtcVersion", ctypes.byref(major), ctypes.byref(minor))
    ptx = compile_ptx(lib, path)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    missing = [k for k in kernels if k not in entries]
    if missing:
        print(f"nvrtc-check: {path}: kernels missing from the PTX: {missing} (found {sorted(entries)})",
              file=sys.stderr)
        sys.exit(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([ptxas, f"-arch={sm}", "-v", "--warning-as-error", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True)
    if out.returncode != 0:
        print(f"nvrtc-check: ptxas -arch={sm} rejected the PTX of {path}:\n{out.stderr}", file=sys.stderr)
        sys.exit(1)
    regs = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", out.stderr, re.S)
    usage = ", ".join(f"{k} {r} regs" for k, r in regs)
    print(f"nvrtc-check: {path}: NVRTC {major.value}.{minor.value} -> PTX -> {sm} ok ({len(entries)} kernels; {usage})")


if __name__ == "__main__":
    main()
