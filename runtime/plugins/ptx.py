"""PTX of the ``qfsdk::FakeQuantize`` kernel, for TensorRT's ahead-of-time Python plugins.

``y = (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale`` on float32, with IEEE
division and round half to even (``cvt.rni``), as ONNX Div/Round and the exporter's reference function
compute it. The quantizer's constants are baked into the text as exact float32 bit patterns, so each
node gets its own small kernel. Kernel arguments follow TensorRT's AOT convention: input pointer, the
element count (int32), output pointer.
"""

from __future__ import annotations

import struct

KERNEL_NAME = "qfsdk_fake_quantize"
BLOCK_SIZE = 256

_TEMPLATE = """.version 7.0
.target sm_52
.address_size 64

.visible .entry {name}(
    .param .u64 x_ptr,
    .param .u32 count,
    .param .u64 y_ptr
)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<9>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [x_ptr];
    ld.param.u32 %r1, [count];
    ld.param.u64 %rd2, [y_ptr];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.s32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.s32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    add.s64 %rd7, %rd4, %rd5;
    mov.f32 %f5, {scale};
    mov.f32 %f6, {zero_point};
    mov.f32 %f7, {qmin};
    mov.f32 %f8, {qmax};
    ld.global.f32 %f1, [%rd6];
    div.rn.f32 %f2, %f1, %f5;
    cvt.rni.f32.f32 %f3, %f2;
    add.rn.f32 %f3, %f3, %f6;
    max.f32 %f3, %f3, %f7;
    min.f32 %f3, %f3, %f8;
    sub.rn.f32 %f3, %f3, %f6;
    mul.rn.f32 %f4, %f3, %f5;
    st.global.f32 [%rd7], %f4;
DONE:
    ret;
}}
"""


def _f32(value: float) -> str:
    """A PTX float32 literal holding exactly ``float32(value)``."""
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", value))[0]


def fake_quantize_ptx(scale: float, zero_point: int, qmin: int, qmax: int) -> str:
    """PTX for one FakeQuantize node; launch with ``BLOCK_SIZE`` threads per block."""
    return _TEMPLATE.format(name=KERNEL_NAME, scale=_f32(scale), zero_point=_f32(zero_point), qmin=_f32(qmin),
                            qmax=_f32(qmax))
