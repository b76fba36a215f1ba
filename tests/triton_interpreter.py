"""fla's Triton kernels on a CPU, under Triton's interpreter (``TRITON_INTERPRET=1``).

With ``TRITON_INTERPRET=1`` Triton runs a ``@triton.jit`` kernel as Python over numpy arrays,
one program instance at a time, on CPU tensors: slow, but it computes what the kernel computes.
That lets the fused-vs-reference tests check archbench's fla adapters (layouts, gate and scale
conventions, initial and final states, GQA, the backward) on a machine without a GPU. Two gaps
of the interpreter (checked on triton 3.6.0 and 3.9.0) stop fla's kernels, and are patched here:

1. The variable of a ``for i in range(n)`` loop is a Python int under the interpreter, while
   compiled Triton gives a tensor; fla calls tensor methods on it (``i_t.to(tl.int64)``). The
   interpreter already rewrites every assignment ``x = value`` into ``x = to_tensor(value)``;
   the patch makes each such loop start with ``i = i``, so the loop variable is rewritten too
   (not for ``tl.static_range``, whose variable is a compile-time int in Triton as well).
2. ``range(n)`` on a runtime scalar calls ``n.__index__``, which the interpreter implements as
   ``int(array_of_one_element)``; numpy >= 2.3 refuses that. The patch reads ``.item()``.
3. The interpreter swaps Triton's builtins (``tl.gather``, ...) for its own while a kernel runs,
   on the ``triton.language`` module only; a kernel module that bound a builtin to its own name
   (fla's ``gather = tl.gather``) still called the compiler's version. The patch swaps those too.

Not patched: bf16. The interpreter keeps bf16 tensors as raw 16-bit patterns and does arithmetic
on them as integers, so bf16 kernels give garbage; under the interpreter the tests run fp16 where
they would run bf16 (``fused_devices.half``), and the GPU run checks bf16.

Autotuned kernels need no GPU either: ``triton_single_config`` replaces benchmarking with one
run of the first config that works (the interpreter has no driver to time with).

What this does not check: anything the compiler does (tile shapes that do not fit, shared
memory, numerics of tensor cores and of bf16 accumulation on the device). The GPU run of the
same tests covers those (docs/gpu-nodes.md).
"""

from __future__ import annotations

import ast
import os
import sys


def active() -> bool:
    """Whether this process runs Triton kernels under the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def patch(interpreter) -> None:
    """Patch ``interpreter`` (the module ``triton.runtime.interpreter``) in place; idempotent."""
    if getattr(interpreter, "_archbench_patched", False):
        return

    class LoopVariablesAsTensors(interpreter.ASTTransformer):
        def visit_For(self, node: ast.For) -> ast.For:
            self.generic_visit(node)
            call = node.iter.func if isinstance(node.iter, ast.Call) else None
            unrolled = isinstance(call, (ast.Name, ast.Attribute)) and (
                getattr(call, "id", None) == "static_range" or getattr(call, "attr", None) == "static_range"
            )  # tl.static_range unrolls: its variable is a compile-time int in Triton too
            if isinstance(node.target, ast.Name) and not unrolled:  # prepend `i = i`, which visit_Assign rewrites
                name = node.target.id
                again = ast.Assign(
                    targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Name(id=name, ctx=ast.Load())
                )
                node.body.insert(0, self.visit_Assign(again))
            return node

    interpreter.FunctionRewriter.ast_transformer = LoopVariablesAsTensors()

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor

    original_lang = interpreter._patch_lang

    def patch_lang(fn):
        scope = original_lang(fn)
        module = sys.modules.get(fn.__module__)
        for name, value in list(fn.__globals__.items()) if module is not None else ():
            if interpreter.tl.core.is_builtin(value):  # an alias such as fla's `gather = tl.gather`
                interpreter._patch_attr(module, name, value, interpreter.interpreter_builder, scope)
        return scope

    interpreter._patch_lang = patch_lang
    interpreter._archbench_patched = True


def install() -> None:
    from triton.runtime import interpreter

    import triton_single_config

    patch(interpreter)
    triton_single_config.install()
