"""Static checks of the CUDA kernels, read from the PTX that NVVM makes for a real GPU (sm_90); no
GPU needed, only NVVM (``pip install nvidia-cuda-nvcc-cu12``, part of ``fastloss[test]``; CI
sets ``FASTLOSS_REQUIRE=ptx`` so that these fail rather than skip without it). The simulator
runs kernels as Python and types nothing, so these are also what keeps typing errors from
hiding behind it.

* Every kernel compiles for float32, float16, bfloat16 (uint16 bits) and float64 inputs.
* float32 and half kernels do no float64 arithmetic per element. In their innermost loops (the
  per-element loops of the row kernels, the grid-stride loops of the elementwise ones, the
  shuffle loop of a row's reduction) the only float64 instructions are the batch sum's: an
  ``add.f64`` of a running sum and an item's or row's loss widened by ``cvt.f64.f32`` (checked
  by data flow: each widened value goes only to such an add). Per row (a row loop outside its
  inner loops) the batch sum and at most ``ROW_F64[kernel]`` more. Kernels whose formula needs
  float64 per element have a budget with the reason (``F64_FORMULAS``).
* The row kernels merge a row's values with warp shuffles: ``shfl.sync.bfly`` in the row loop.
* No floating-point atomics (the reductions are in a fixed order), no local memory.

Run with the rest of the CUDA tests (``-k cuda``); the table of float64 instruction counts per
kernel is printed with ``-s``.
"""

import collections
import os
import re
import subprocess
import sys

import pytest

import fastloss
from cases import REQUIRED

ROW_KERNELS = ("softmax_xent", "softmax_xent_probs", "multiclass_hinge", "cosine_similarity")
SUM_KERNELS = ("finish", "label_weight")  # batch sums only: float64 throughout, by design
TAGS = ("f32", "f16", "bf16", "f64")
HALF_OR_F32 = TAGS[:3]

# float64 instructions per row beyond the batch sum's pair, with the reason
ROW_F64 = {
    "softmax_xent": (4, "lse - x_y in float64 once per row, rounded as the float64 reference rounds it"),
}
# kernels whose formula needs float64 per element: (at most this many float64 instructions in
# loops, the reason); the counts are of the compiled code (unrolled and unswitched copies included)
F64_FORMULAS = {
    "cosine_similarity": (140, "the row sums and the gradient in float64: the squares of float32 values "
                               "overflow float32 (|x| > 1.8e19) where the norm does not (as the CPU backends)"),
    "poisson_nll": (36, "the loss is put together in float64 (_items): t x overflows float32 where the "
                        "loss does not"),
}

_COMPILE = r"""
import os, sys
import numba.cuda.dispatcher as disp
from numba import cuda, types as T

class FakeDevice:  # without a GPU, device functions cannot ask the driver for a compute capability
    compute_capability = (9, 0)

if not cuda.is_available():
    disp.get_current_device = lambda: FakeDevice()
from fastloss.backends import cuda_kernels as m

out = sys.argv[1]
ALL_BF = m.BF_X | m.BF_T | m.BF_W | m.BF_P | m.BF_G
# (tag, x's element type, flags, grad_output's element type): a host grad_output goes up in the
# compute dtype (float32 for half inputs), a bfloat16 one as bits
for tag, f, flags, go in (("f32", T.float32, 0, T.float32), ("f16", T.float16, 0, T.float32),
                          ("bf16", T.uint16, ALL_BF, T.uint16), ("f64", T.float64, m.F64, T.float64)):
    a1, a2, g1 = T.Array(f, 1, "C"), T.Array(f, 2, "C"), T.Array(go, 1, "C")
    d1, i1 = T.Array(T.float64, 1, "C"), T.Array(T.int64, 1, "C")
    i, d, b = T.int64, T.float64, T.boolean
    s = T.float64 if flags & m.F64 else T.float32  # float scalars come in the compute dtype
    kernels = {"softmax_xent": (a2, i1, a1, i, s, s, a2, s, g1, i, d1, a1, d1, i),
               "softmax_xent_probs": (a2, a2, a1, s, s, a2, s, g1, i, d1, a1, d1, i),
               "multiclass_hinge": (a2, i1, a1, s, b, b, a2, s, g1, i, d1, a1, d1, i),
               "cosine_similarity": (a2, a2, a2, s, g1, i, d1, a1, d1, i),
               "sigmoid_bce": (a1, a1, a1, a1, a1, s, g1, i, a1, d1),
               "finish": (d1, d1, d, a1),
               "label_weight": (i1, i, i, a1, d1)}
    kernels.update({name: (a1, a1, s, s, a1, s, g1, i, a1, d1) for name in m.ELEMENTWISE})
    assert set(kernels) == set(m._FACTORIES), set(m._FACTORIES) ^ set(kernels)
    for name, sig in kernels.items():
        kflags = {"finish": flags & m.BF_X, "label_weight": flags & m.BF_W}.get(name, flags)
        ptx, _ = cuda.compile_ptx(m.kernel(name, kflags).py_func, sig, cc=(9, 0))
        with open(os.path.join(out, f"{name}.{tag}.ptx"), "w") as fh:
            fh.write(ptx)
print("compiled")
"""


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    """{(kernel, tag): PTX text} of every kernel, compiled in a fresh interpreter with the real
    CUDA target (not the simulator)."""
    pytest.importorskip("numba.cuda")
    out = tmp_path_factory.mktemp("ptx")
    src = os.path.dirname(os.path.dirname(fastloss.__file__))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _COMPILE, str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0 and any(s in proc.stderr for s in ("NvvmSupportError", "DynamicLibNotFoundError",
                                                                "libnvvm", "libNVVM", "cannot be imported")):
        why = "NVVM/NVRTC not installed: " + proc.stderr.strip().splitlines()[-1]
        if "ptx" in REQUIRED:  # CI asks for the check: install fastloss[test] (it brings NVVM)
            pytest.fail(why)
        pytest.skip(why)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    return {tuple(p.name.split(".")[:2]): p.read_text() for p in out.glob("*.ptx")}


# ---- reading PTX: kernel bodies, basic blocks, loops --------------------------------------------

_LABEL = re.compile(r"^(\$\w+):$")
_BRANCH = re.compile(r"^(@!?%p\d+\s+)?bra(?:\.uni)?\s+(\$\w+);$")
_ARITH = {"add", "sub", "mul", "fma", "mad", "div", "rcp", "sqrt", "rsqrt", "neg", "abs", "min", "max",
          "setp", "set", "cvt", "testp", "copysign", "ex2", "lg2", "sin", "cos", "tanh"}


def _opcode(ins):
    return ins.split()[1] if ins.startswith("@") else ins.split()[0]


def _registers(ins):
    """The registers an instruction names, its destination first (a guard predicate left out)."""
    return re.findall(r"%\w+", ins.split(None, 1)[1] if ins.startswith("@") else ins)


def _is_f64_arith(op):
    """A float64 arithmetic instruction (conversions to and from float64 included; loads, stores,
    moves and selects are not arithmetic)."""
    parts = op.split(".")
    return parts[0] in _ARITH and "f64" in parts[1:]


def _kernel_body(ptx):
    """The statements (labels, instructions) of the one .entry of ``ptx``."""
    (start,) = [m.end() for m in re.finditer(r"\.entry\s+\S+\s*\(", ptx)]
    i = ptx.index("{", ptx.index(")", start))
    depth = 0
    for j in range(i, len(ptx)):
        depth += {"{": 1, "}": -1}.get(ptx[j], 0)
        if depth == 0:
            break
    statements = []
    for line in ptx[i + 1:j].splitlines():
        s = line.strip()
        if s and not s.startswith(("//", ".", "{", "}")):
            statements.append(s)
    return statements


def _blocks(statements):
    """(blocks, successors): the basic blocks (lists of instructions) and the CFG."""
    blocks, labels = [[]], {}
    for s in statements:
        m = _LABEL.match(s)
        if m:
            if blocks[-1]:
                blocks.append([])
            labels[m.group(1)] = len(blocks) - 1
            continue
        blocks[-1].append(s)
        if _opcode(s).startswith(("bra", "ret", "exit")):
            blocks.append([])
    succ = []
    for k, block in enumerate(blocks):
        last = block[-1] if block else ""
        m = _BRANCH.match(last)
        nxt = [k + 1] if k + 1 < len(blocks) else []
        if m:
            succ.append([labels[m.group(2)]] + (nxt if m.group(1) else []))
        elif last and _opcode(last).startswith(("ret", "exit")):
            succ.append(nxt if last.startswith("@") else [])
        else:
            succ.append(nxt)
    return blocks, succ


def _loops(succ):
    """{header: body} of the natural loops (a back edge u -> h: h dominates u)."""
    reach, stack = {0}, [0]
    while stack:
        for v in succ[stack.pop()]:
            if v not in reach:
                reach.add(v)
                stack.append(v)
    pred = collections.defaultdict(list)
    for u in reach:
        for v in succ[u]:
            pred[v].append(u)
    dom = {v: set(reach) for v in reach}
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for v in sorted(reach - {0}):
            new = {v} | set.intersection(*(dom[p] for p in pred[v]))
            if new != dom[v]:
                dom[v], changed = new, True
    loops = collections.defaultdict(set)
    for u in reach:
        for h in succ[u]:
            if h in dom[u]:
                body, stack = {h, u}, ([u] if u != h else [])
                while stack:
                    for p in pred[stack.pop()]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                loops[h] |= body
    return loops


class Kernel:
    """One kernel's PTX, by region: ``inner`` (innermost loops), ``outer`` (in a loop, not in an
    innermost one), ``straight`` (outside loops); each a list of instructions."""

    def __init__(self, ptx):
        self.ptx = ptx
        blocks, succ = _blocks(_kernel_body(ptx))
        loops = _loops(succ)
        inner = set().union(*[body for h, body in loops.items()
                              if not any(h2 != h and h2 in body for h2 in loops)])
        outer = set().union(*loops.values()) - inner
        self.regions = {name: [ins for k in sorted(ks) for ins in blocks[k]]
                        for name, ks in (("inner", inner), ("outer", outer),
                                         ("straight", set(range(len(blocks))) - inner - outer))}
        self.defs = collections.defaultdict(set)  # register -> the opcodes that write it
        self.uses = collections.defaultdict(set)  # register -> the opcodes that read it
        for ins in (i for region in self.regions.values() for i in region):
            operands = _registers(ins)
            if operands:
                self.defs[operands[0]].add(_opcode(ins))
                for reg in operands[1:]:
                    self.uses[reg].add(_opcode(ins))

    def f64(self, region):
        return collections.Counter(op for op in map(_opcode, self.regions[region]) if _is_f64_arith(op))

    def not_batch_sum(self, region):
        """The float64 arithmetic of ``region`` that is not the batch sum's: an ``add.f64`` of a
        running sum (written only by add.f64/mov.f64) and one value widened by ``cvt.f64.f32``
        that goes nowhere else; both instructions of such a pair are left out."""
        left = []
        for ins in self.regions[region]:
            op = _opcode(ins)
            if not _is_f64_arith(op):
                continue
            regs = _registers(ins)
            if op == "cvt.f64.f32" and self.uses[regs[0]] <= {"add.f64"}:
                continue
            if op == "add.f64":
                widened = [r for r in regs[1:] if self.defs[r] == {"cvt.f64.f32"}]
                running = [r for r in regs[1:] if self.defs[r] <= {"add.f64", "mov.f64"}]
                constant = len(regs) == 2  # acc = 0 + item: the other operand is a literal
                if len(widened) == 1 and (running or constant):
                    continue
            left.append(op)
        return collections.Counter(left)


@pytest.fixture(scope="module")
def kernels(ptx):
    return {key: Kernel(text) for key, text in ptx.items()}


# ---- the checks -------------------------------------------------------------------------------


def test_cuda_kernels_compile_for_every_dtype(ptx):
    names = {name for name, _ in ptx}
    assert names >= set(ROW_KERNELS) | set(SUM_KERNELS) | {"mse", "sigmoid_bce"}
    assert set(ptx) == {(name, tag) for name in names for tag in TAGS}
    for key, text in ptx.items():
        assert text.count(".entry") == 1, key


def test_cuda_float64_instruction_table(kernels, capsys):
    """Prints, per kernel and input dtype, float64 arithmetic instructions: in loops (innermost,
    outer) and in all. The table of the report; the other tests hold the limits."""
    rows = [f"{'kernel':20s} " + " ".join(f"{tag + ' in/out/all':>16s}" for tag in HALF_OR_F32)]
    for name in sorted({n for n, _ in kernels}):
        cells = []
        for tag in HALF_OR_F32:
            k = kernels[name, tag]
            inner, outer, straight = (sum(k.f64(r).values()) for r in ("inner", "outer", "straight"))
            cells.append(f"{inner:>6d}/{outer:d}/{inner + outer + straight:d}".rjust(16))
        rows.append(f"{name:20s} " + " ".join(cells))
    with capsys.disabled():
        print("\nfloat64 arithmetic instructions in the PTX (innermost loops / outer loops / all):")
        print("\n".join(rows))
    assert len(rows) > len(ROW_KERNELS)


@pytest.mark.parametrize("tag", HALF_OR_F32)
def test_cuda_no_float64_arithmetic_per_element(kernels, tag):
    for (name, t), k in kernels.items():
        if t != tag or name in SUM_KERNELS:
            continue
        inner, outer = k.not_batch_sum("inner"), k.not_batch_sum("outer")
        if name in F64_FORMULAS:
            limit, why = F64_FORMULAS[name]
            in_loops = k.f64("inner") + k.f64("outer")
            assert sum(in_loops.values()) <= limit, f"{name}.{tag} ({why}): {dict(in_loops)}"
            continue
        assert not inner, f"{name}.{tag}: float64 arithmetic per element: {dict(inner)}"
        limit, why = ROW_F64.get(name, (0, "no float64 per row but the batch sum"))
        assert sum(outer.values()) <= limit, f"{name}.{tag} ({why}): {dict(outer)}"


@pytest.mark.parametrize("name", ROW_KERNELS)
def test_cuda_row_reductions_use_warp_shuffles(kernels, name):
    for tag in TAGS:
        k = kernels[name, tag]
        in_loops = [i for r in ("inner", "outer") for i in k.regions[r] if _opcode(i).startswith("shfl.sync.bfly")]
        assert in_loops, f"{name}.{tag}: no warp shuffle in the row loop"


def test_cuda_no_float_atomics_and_no_local_memory(ptx):
    for key, text in ptx.items():
        assert not re.search(r"^\s*(@!?%p\d+\s+)?(atom|red)\.\S*f(16|32|64)", text, re.M), key
        assert not re.search(r"^\s*(@!?%p\d+\s+)?(ld|st)\.local|^\s*\.local\s", text, re.M), key
