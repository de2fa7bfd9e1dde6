"""Compile Triton kernels for an H100 (sm_90) without a GPU, for the tests.

On a machine without a GPU the tests run the Triton kernels through the interpreter
(TRITON_INTERPRET=1), which is lenient about types and never lowers a kernel: a kernel can pass
every test here and still fail to compile on a GPU. `compile_sm90` compiles a list of kernel
variants to PTX for sm_90 (Triton ships ptxas: no GPU needed) in ONE subprocess without
TRITON_INTERPRET, and returns per-variant statistics of the PTX.

A variant is a dict, built by `kernel_spec` (by hand) or `record_launches` (from a real
launcher call on meta tensors, so block sizes, strides and flags are what the launcher picks);
all but its tag (any labels, echoed into its result; they stay in the test process) is JSON:
    {"module": "fastgan.ops.pixel_norm", "kernel": "_pixel_norm_fwd_kernel",
     "args": {name: value}, "types": {name: "fp64"}, "num_warps": 4 or None, "tag": {...}}
args hold what a launch would pass, encoded: a pointer as {"ptr": "fp32"}, a tl dtype as
{"dtype": "fp32"}, else the int / float / bool / None itself. The subprocess turns them into a
signature the way a launch specializes its arguments (Triton 3.x): constexpr parameters take the
value; pointers get tt.divisibility 16 (16-byte aligned, as fresh allocations are; an unaligned
view would launch a variant without it); an int equal to 1 becomes the constant 1 (a unit
stride), other ints are i32 (i64 when they do not fit) with tt.divisibility 16 when they are
multiples of 16; unannotated Python floats are fp32, annotated parameters (`eps: tl.float64`)
take their annotation; `types` overrides a parameter's type. Scalar parameters missing from
args are taken as an i32 multiple of 16 (a size or stride of a 512-channel map).

Each result is the variant's tag plus
    ok:            compiled to PTX (and through ptxas to a cubin)
    error:         the exception's text when not ok
    vector_loads:  ld.global.v2/.v4 instructions (any cache modifier in between)
    vector_stores: st.global.v2/.v4 instructions
    max_load_bytes: the widest ld.global, in bytes (16: v4.b32; 4: one b32, which for a 16-bit
                   type is a 2-element vector load that vector_loads does not count)
    f64:           occurrences of ".f64" (fp64 instructions and registers; an fp64 scalar
                   argument that is rounded once costs a few)
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]

_TORCH_PTR = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
              "bool": "i1", "int8": "i8", "uint8": "u8", "int16": "i16", "int32": "i32",
              "int64": "i64"}


# ---------------------------------------------------------------------------------------------
# Building variants (in the test process; triton may be in interpreter mode there)

def _encode(value):
    """A launch argument or constexpr as JSON (see the module docstring)."""
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"ptr": _TORCH_PTR[str(value.dtype).removeprefix("torch.")]}
    if isinstance(value, tl.dtype):
        return {"dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot encode a kernel argument of type {type(value).__name__}")


def kernel_spec(module: str, kernel: str, *, ptrs: dict | None = None,
                args: dict | None = None, types: dict | None = None,
                num_warps: int | None = None, **tag) -> dict:
    """One variant by hand: ptrs maps pointer parameters to element types ("fp32", "bf16", or a
    torch dtype), args gives constexprs and scalars (a unit stride as 1, tl dtypes allowed),
    types forces parameter types (e.g. {"alpha": "fp64"}); tag is echoed into the result."""
    enc = {}
    for name, dt in (ptrs or {}).items():
        dt = _TORCH_PTR.get(str(dt).removeprefix("torch."), str(dt))
        enc[name] = {"ptr": dt}
    for name, value in (args or {}).items():
        enc[name] = _encode(value)
    return {"module": module, "kernel": kernel, "args": enc, "types": dict(types or {}),
            "num_warps": num_warps, "tag": dict(tag)}


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records a variant, runs nothing."""

    def __init__(self, module, name, kernel, log, tag):
        self.module, self.name, self.log, self.tag = module, name, log, tag
        self.params = list(inspect.signature(kernel.fn).parameters)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            num_warps = kwargs.pop("num_warps", None)
            for key in ("num_stages", "num_ctas"):
                kwargs.pop(key, None)
            values = dict(zip(self.params, args), **kwargs)
            self.log.append({"module": self.module, "kernel": self.name,
                             "args": {k: _encode(v) for k, v in values.items()}, "types": {},
                             "num_warps": num_warps, "tag": dict(self.tag)})
        return launch


def record_launches(module, fn, *args, tag: dict | None = None, **kwargs) -> list[dict]:
    """The variants `fn(*args, **kwargs)` launches from `module`'s kernels (every @triton.jit
    attribute of the module is swapped for a recorder meanwhile, so give it meta tensors)."""
    import triton

    log = []
    saved = {name: obj for name, obj in vars(module).items()
             if isinstance(obj, triton.runtime.jit.KernelInterface)}
    try:
        for name, obj in saved.items():
            setattr(module, name, _Recorder(module.__name__, name, obj, log, tag or {}))
        fn(*args, **kwargs)
    finally:
        for name, obj in saved.items():
            setattr(module, name, obj)
    return log


def compile_sm90(specs: list[dict], timeout: float = 600) -> list[dict]:
    """Compile every variant for sm_90 in one subprocess (variants that specialize the same way
    compile once); one result per spec, in order (see the module docstring)."""
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH"))
                                        if p)
    with tempfile.TemporaryDirectory() as logs:
        jobs = json.dumps([{k: v for k, v in s.items() if k != "tag"} for s in specs])
        proc = subprocess.run([sys.executable, __file__, logs], input=jobs,
                              env=env, capture_output=True, text=True, timeout=timeout)
        stats = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or len(stats) != len(specs):
            # the compiler died (an assertion aborts the process): name the variant it was on
            i = len(stats)
            log = pathlib.Path(logs, f"{i}.log")
            native = log.read_text(errors="replace") if log.exists() else ""
            what = json.dumps(specs[i], default=str) if i < len(specs) else "?"
            raise RuntimeError(f"sm_90 compile subprocess died (rc {proc.returncode}) on variant "
                               f"{i}: {what}\n{native[-3000:]}\n{proc.stderr[-3000:]}")
    return [{**s["tag"], "kernel": s["kernel"], **st} for s, st in zip(specs, stats)]


# ---------------------------------------------------------------------------------------------
# The subprocess: compile and count

def _signature(fn, spec):
    """(signature, constexprs, attrs) for ASTSource, specialized the way a launch is."""
    import triton.language as tl

    sig, consts, attrs = {}, {}, {}
    args, types = spec["args"], spec["types"]
    for i, p in enumerate(fn.params):
        name = p.name
        value = args.get(name, 16)
        if isinstance(value, dict) and "dtype" in value:
            value = tl.dtype(value["dtype"])
        if p.is_constexpr:
            sig[name], consts[name] = "constexpr", value
        elif name in types:
            sig[name] = types[name]
        elif isinstance(value, dict):  # a pointer
            sig[name] = "*" + value["ptr"]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif p.annotation_type:  # e.g. eps: tl.float64 (floats and bools are not specialized)
            sig[name] = p.annotation_type
        elif value is None or (type(value) is int and value == 1):
            sig[name], consts[name] = "constexpr", value
        elif isinstance(value, bool):
            sig[name] = "u1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialize {value!r}")
    return sig, consts, attrs


def _stats(ptx: str) -> dict:
    import re

    widest = 0
    for suffix in re.findall(r"\bld\.global((?:\.[\w:]+)+)", ptx):
        parts = suffix.split(".")
        lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = [int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)]
        widest = max(widest, lanes * bits[-1] // 8 if bits else 0)
    return {"vector_loads": len(re.findall(r"\bld\.global(?:\.[\w:]+)*?\.v[248]\.", ptx)),
            "vector_stores": len(re.findall(r"\bst\.global(?:\.[\w:]+)*?\.v[248]\.", ptx)),
            "max_load_bytes": widest,
            "f64": ptx.count(".f64")}


def _main(logs: str) -> None:
    import importlib
    import traceback

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    done = {}
    for i, spec in enumerate(json.loads(sys.stdin.read())):
        fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
        sig, consts, attrs = _signature(fn, spec)
        key = repr((spec["module"], spec["kernel"], sig, {k: str(v) for k, v in consts.items()},
                    sorted(attrs.items()), spec["num_warps"]))
        if key not in done:
            # MLIR and ptxas report on fd 2: keep each variant's report, for its error
            log = os.path.join(logs, f"{i}.log")
            saved = os.dup(2)
            with open(log, "wb") as f:
                os.dup2(f.fileno(), 2)
            try:
                options = {"num_warps": spec["num_warps"]} if spec["num_warps"] else None
                compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=target,
                                          options=options)
                done[key] = {"ok": True, "error": None, **_stats(compiled.asm["ptx"])}
            except Exception:  # report it; compile the rest
                sys.stderr.flush()
                with open(log, errors="replace") as f:  # the lines that say what went wrong
                    native = [ln for ln in f.read().splitlines()
                              if any(w in ln for w in ("error", "Error", "Assertion", "failed"))]
                error = "\n".join([f"{spec['kernel']} {sig} {consts}", *native[:12],
                                   traceback.format_exc()[-1500:]])
                done[key] = {"ok": False, "error": error,
                             "vector_loads": 0, "vector_stores": 0, "max_load_bytes": 0,
                             "f64": 0}
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
        print(json.dumps(done[key]), flush=True)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    _main(sys.argv[1])
