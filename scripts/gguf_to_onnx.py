#!/usr/bin/env python3
"""Converts a llama- or qwen2-architecture GGUF into a decoder-with-past ONNX model.

    gguf_to_onnx.py MODEL.gguf OUT_DIR [--weights gguf|int8-channel|int8|fp32] [--int8-activations]

writes
    OUT_DIR/model.onnx      the decoder (external data model.onnx.data only past 2 GB)
    OUT_DIR/tokenizer.json  Hugging Face tokenizers file built from the GGUF vocabulary
    OUT_DIR/config.json     the catalog entry register_model_from_files() stores: chat format,
                            stop tokens, context window (src/models/config.rs)
    OUT_DIR/model.json      what the conversion made: shapes, special ids, graph inputs/outputs
    OUT_DIR/lm_head.f16     output projection, raw little-endian float16, row-major [vocab, hidden]

Graph interface (the Hugging Face optimum / onnx-community "decoder with past" layout):
  inputs   input_ids                  int64   [batch, seq]
           attention_mask             int64   [batch, past + seq]   1 = real token, 0 = padding
           position_ids               int64   [batch, seq]          < context length
           logits_to_keep             int64   [1]                   K: logits of the last K positions
           past_key_values.{i}.key    float32 [batch, kv_heads, past, head_dim]   i = 0..layers-1
           past_key_values.{i}.value  float32 [batch, kv_heads, past, head_dim]
  outputs  logits                     float32 [batch, min(K, seq), vocab]
           hidden_states              float32 [batch, seq, hidden]
           present.{i}.key / .value   float32 [batch, kv_heads, past + seq, head_dim]

Deviations from the optimum layout, on purpose:
  * `logits` holds the last K = logits_to_keep positions only, not [batch, seq, vocab]: prefill
    (K = 1) never materialises vocab-sized logits for every prompt position, and a step that
    checks K - 1 drafted tokens gets the logits of each. Batches must therefore be
    LEFT-padded, so that the last position is a real token of every row.
  * Extra output `hidden_states`: the final-RMS-normed hidden states of every input position,
    i.e. what the output projection is applied to (a low-rank adapter trainer uses them).
    `logits[b, -1] == hidden_states[b, -1] @ lm_head.T` up to the weight format (below).
  * `lm_head.f16` beside the model holds the output projection weight for that trainer
    (for tied-embedding models such as SmolLM2 that is the token embedding).
  * First step: pass past tensors with past = 0 ([batch, kv_heads, 0, head_dim], empty).

Attention semantics: query position s of the step attends to cache slot t (0 <= t < past+seq)
iff t <= past + s and attention_mask[b, t] == 1; RoPE angles come from position_ids
(a precomputed cos/sin table in float64 rounded to float32, gathered by position), in the
Hugging Face rotate-half form. For `llama` GGUFs the Q/K rows that llama.cpp's converter
permuted for its interleaved rope are permuted back, so the cache layout equals Hugging Face's.

Weights (--weights, default gguf). GGUF tensors are read one at a time and released once
written; every supported block format (Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0) is rewritten
EXACTLY as value = code * scale (+ offset) per block, checked bit for bit against the `gguf`
package's dequantisation during conversion; F16/F32 tensors and other types become float32.
  * linear layers (q/k/v fused into one node, gate/up fused, o, down, lm_head) become
    com.microsoft MatMulNBits nodes with the GGUF's own blocks (32 values; 16 for Q6_K):
      - 4-bit codes (Q4_0, Q4_1, Q4_K): bits=4, zero point = -lowest code;
        Q4_1/Q4_K's per-block minimum adds a small float32 term: block sums of x @ offsets;
      - 5-8-bit codes (Q5_0, Q6_K, Q8_0): with float32 activations (the default) split into
        nibbles, c - lo = 16 h + l, and evaluated as one bits=4 MatMulNBits over K' = 2K on
        Concat(x, x) (ONNX Runtime 1.31 has no fast float32 kernel for bits=8); with
        --int8-activations a single bits=8 node.
    accuracy_level 0 (float32 activations, the default) reproduces the float32 numpy reference
    to rounding (greedy tokens identical, logits within ~1e-4). --int8-activations sets
    accuracy_level 4: ONNX Runtime quantises activations to int8 per block of 32 on the fly (as
    llama.cpp does): ~2.5x faster decode for 5-8-bit-heavy models, logits move by a few tenths,
    and results then depend slightly on how many rows one call holds (batch/prompt size).
  * the token embedding is kept as int8 codes with per-block float32 scale/offset, gathered
    and dequantised per token (exact).
--weights int8-channel: integer GEMM for every linear layer but the output projection. Each
dequantised weight is re-quantised to symmetric int8 per output channel, and the activations
to int8 per row at run time (scale max|row| / 127, stored as uint8 with zero point 128); one
MatMulIntegerToFloat node sums the products in int32, so a row's result does not depend on
the other rows of the call. ONNX Runtime runs it on its int8 GEMM (VNNI/AMX where the CPU has
them; without VNNI, its AVX2 u8*s8 kernel may saturate), which for prompts is several times
faster than MatMulNBits. Not exact: measured on Qwen2.5-Coder-0.5B, logits within 0.84 of the
reference, greedy tokens equal on 5 of 6 fixture prompts, the sixth parting at a near-tie.
The embedding and the output projection stay exact GGUF blocks (the latter with int8
activations).
--weights int8 re-quantises every dequantised weight to 8-bit blocks of --block-size
(asymmetric) with int8 activations; --weights fp32 / --no-quantize writes float32 (tests).
Measured on SmolLM2-135M (Q4_1): int8 re-quantisation moved logits by up to 1.4 and changed
greedy answers; the exact encoding did not and is about as fast. The output projection
(lm_head) is the GGUF's Q8_0 tensor kept exactly, so it loses nothing either (re-quantising
it with int8 activations is what broke answers in earlier conversions).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from gguf import GGUFReader
from gguf.quants import dequantize

OPSET = 23  # RMSNormalization
# Weight modes that read the GGUF blocks exactly (int8-channel: for the embedding and lm_head).
EXACT_MODES = ("gguf", "int8-channel")
MS_DOMAIN = "com.microsoft"

# Pre-tokenizers of the two GPT-2-style byte-level BPE vocabularies (llama.cpp's
# tokenizer.ggml.pre names), as in the models' original Hugging Face tokenizer.json files.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    # llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM: "\p{N}" then the GPT-2 regex.
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    # llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2.
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    # Plain GPT-2.
    "default": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
}
NORMALIZERS = {"qwen2": {"type": "NFC"}}

# llama.cpp token types
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

DEFAULT_SYSTEM = {
    "llama": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
}


def log(msg):
    print(f"[gguf_to_onnx {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ggml tensor types (ggml.h) and their block layouts: values per block, bytes per block
F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 6, 8, 12, 14
BLOCKS = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}


class Weight:
    """A [N, K] weight (N output rows, K inputs) either dense float32, or in the exact
    affine block form of a GGUF block format: value = codes * scale + offset, codes int8
    [N, K], scale and offset float32 [N, K / block] (offset may be None)."""

    def __init__(self, dense=None, codes=None, scale=None, offset=None, block=None, code_range=None):
        self.dense_, self.codes, self.scale, self.offset = dense, codes, scale, offset
        self.block, self.code_range = block, code_range

    @property
    def shape(self):
        return (self.dense_ if self.dense_ is not None else self.codes).shape

    @property
    def affine(self):
        return self.codes is not None

    def dense(self):
        if self.dense_ is not None:
            return self.dense_
        n, k = self.codes.shape
        nb = k // self.block
        v = self.codes.reshape(n, nb, self.block).astype(np.float32) * self.scale[:, :, None]
        if self.offset is not None:
            v += self.offset[:, :, None]
        return v.reshape(n, k)

    def permute_rows(self, fn):
        f = lambda a: None if a is None else np.ascontiguousarray(fn(a))  # noqa: E731
        return Weight(f(self.dense_), f(self.codes), f(self.scale), f(self.offset), self.block, self.code_range)


def _f16(blocks, off):
    return blocks[:, off:off + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def affine_blocks(raw: np.ndarray, qtype: int, n: int, k: int) -> Weight:
    """GGUF block data (uint8 [n, bytes per row]) -> exact affine Weight.

    Every supported format is value = scale * code + offset per block, with small integer
    codes; written from ggml's dequantize_row_* reference code."""
    per, nbytes = BLOCKS[qtype]
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, nbytes)  # [n * k / per, nbytes]
    nblk = b.shape[0]
    if qtype in (Q4_0, Q4_1):
        d = _f16(b, 0)
        qs = b[:, 2:18] if qtype == Q4_0 else b[:, 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8)  # value j<16: low nibble
        if qtype == Q4_0:
            return Weight(codes=(q - 8).reshape(n, k), scale=d.reshape(n, -1), block=32, code_range=(-8, 7))
        return Weight(codes=q.reshape(n, k), scale=d.reshape(n, -1), offset=_f16(b, 2).reshape(n, -1),
                      block=32, code_range=(0, 15))
    if qtype == Q5_0:
        d = _f16(b, 0)
        qh = b[:, 2:6].copy().view("<u4")[:, 0]
        bits = ((qh[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # high bit of value j
        qs = b[:, 6:22]
        lo = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        q = (lo | (bits << 4)).astype(np.int16) - 16
        return Weight(codes=q.astype(np.int8).reshape(n, k), scale=d.reshape(n, -1), block=32, code_range=(-16, 15))
    if qtype == Q8_0:
        return Weight(codes=b[:, 2:34].copy().view(np.int8).reshape(n, k), scale=_f16(b, 0).reshape(n, -1),
                      block=32, code_range=(-128, 127))
    if qtype == Q4_K:
        d, dmin = _f16(b, 0), _f16(b, 2)
        sc = b[:, 4:16].astype(np.uint8)
        scales = np.empty((nblk, 8), np.uint8)
        mins = np.empty((nblk, 8), np.uint8)
        scales[:, :4] = sc[:, 0:4] & 63
        mins[:, :4] = sc[:, 4:8] & 63
        scales[:, 4:] = (sc[:, 8:12] & 0x0F) | ((sc[:, 0:4] >> 6) << 4)
        mins[:, 4:] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
        qs = b[:, 16:144].reshape(nblk, 4, 32)  # 4 chunks of 32 bytes -> 64 values each
        q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(nblk, 256).astype(np.int8)  # sub-block 2c, 2c+1
        return Weight(codes=q.reshape(n, k), scale=(d[:, None] * scales).reshape(n, -1),
                      offset=(-(dmin[:, None] * mins)).reshape(n, -1), block=32, code_range=(0, 15))
    if qtype == Q6_K:
        ql = b[:, 0:128].reshape(nblk, 2, 64)
        qh = b[:, 128:192].reshape(nblk, 2, 32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b, 208)
        parts = []
        for lo_bytes, shift, hi_shift in ((slice(0, 32), 0, 0), (slice(32, 64), 0, 2),
                                          (slice(0, 32), 4, 4), (slice(32, 64), 4, 6)):
            parts.append(((ql[:, :, lo_bytes] >> shift) & 0x0F) | (((qh >> hi_shift) & 3) << 4))
        q = np.stack(parts, axis=2).reshape(nblk, 256).astype(np.int16) - 32  # [half, quarter, 32]
        return Weight(codes=q.astype(np.int8).reshape(n, k), scale=(d[:, None] * sc).reshape(n, -1),
                      block=16, code_range=(-32, 31))
    raise ValueError(qtype)


class GGUF:
    def __init__(self, path):
        self.path = path
        self.reader = GGUFReader(path)
        self.fields = self.reader.fields
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.max_affine_error = 0.0

    def get(self, key, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def tensor(self, name) -> np.ndarray:
        """Dequantised float32 tensor, numpy shape [rows, cols] (ggml ne reversed)."""
        t = self.tensors[name]
        return np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)

    def weight(self, name, exact: bool) -> Weight:
        """A 2-D weight; exact=True keeps supported block formats in their affine block form,
        checked against the `gguf` package's dequantisation (must agree bit for bit)."""
        t = self.tensors[name]
        qtype = int(t.tensor_type)
        if not exact or qtype not in BLOCKS:
            return Weight(dense=self.tensor(name))
        n, k = int(t.shape[1]), int(t.shape[0])
        w = affine_blocks(t.data, qtype, n, k)
        ref = self.tensor(name)
        err = float(np.abs(w.dense() - ref).max())
        self.max_affine_error = max(self.max_affine_error, err)
        if err > 1e-6 * max(1.0, float(np.abs(ref).max())):
            raise SystemExit(f"{name}: affine decoding of ggml type {qtype} disagrees with gguf ({err})")
        return w


def fuse_rows(ws, exact: bool):
    """Concatenates the rows of weights with the same number of inputs into one Weight, or
    None if their exact encodings differ (block size, or 4-bit versus wider codes)."""
    if len({w.shape[1] for w in ws}) != 1:
        return None
    if not exact or not all(w.affine for w in ws):
        if any(w.affine for w in ws) and exact:
            return None
        return Weight(dense=np.concatenate([w.dense() for w in ws]))
    narrow = [w.code_range[1] - w.code_range[0] <= 15 for w in ws]
    if len({w.block for w in ws}) != 1 or len(set(narrow)) != 1:
        return None
    if narrow[0] and len({w.code_range for w in ws}) != 1:
        return None
    lo = min(w.code_range[0] for w in ws)
    hi = max(w.code_range[1] for w in ws)
    offset = None
    if any(w.offset is not None for w in ws):
        offset = np.concatenate([w.offset if w.offset is not None else np.zeros_like(w.scale) for w in ws])
    return Weight(codes=np.concatenate([w.codes for w in ws]), scale=np.concatenate([w.scale for w in ws]),
                  offset=offset, block=ws[0].block, code_range=(lo, hi))


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute on the rows (axis 0) of a Q/K
    weight, its bias, or their per-block scales/offsets: GGUF row 2i + j of a head holds
    Hugging Face row j * head_dim / 2 + i."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def quantize_blocks_u8(w: np.ndarray, block: int):
    """w float32 [N, K] -> (codes uint8 [N, nb, block], scales f32 [N, nb], zero points u8 [N, nb]).

    Asymmetric per (row, block): x ~= (code - zp) * scale, the block's range mapped onto 0..255
    with 0 exactly representable. K is zero-padded to a multiple of the block."""
    n, k = w.shape
    nb = -(-k // block)
    if nb * block != k:
        w = np.pad(w, ((0, 0), (0, nb * block - k)))
    wb = w.reshape(n, nb, block)
    lo = np.minimum(wb.min(axis=2), 0.0)
    hi = np.maximum(wb.max(axis=2), 0.0)
    scale = (hi - lo) / 255.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, 255)
    codes = np.clip(np.round(wb / scale[:, :, None]) + zp[:, :, None], 0, 255).astype(np.uint8)
    return codes, scale, zp.astype(np.uint8)


class Builder:
    def __init__(self):
        self.nodes, self.inits, self.counter = [], [], 0
        self.init_bytes = 0
        self._consts = {}

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def init(self, name, arr):
        t = numpy_helper.from_array(np.asarray(arr), name)
        self.init_bytes += len(t.raw_data)
        self.inits.append(t)
        return name

    def const_i64(self, values):
        key = ("i64", tuple(values) if isinstance(values, (list, tuple)) else values)
        if key not in self._consts:
            self._consts[key] = self.init(self.name("c"), np.array(values, dtype=np.int64))
        return self._consts[key]

    def const_f32(self, value):
        key = ("f32", value)
        if key not in self._consts:
            self._consts[key] = self.init(self.name("c"), np.array(value, dtype=np.float32))
        return self._consts[key]

    def op(self, op_type, inputs, n_out=1, out=None, domain=None, hint=None, **attrs):
        outs = out if out is not None else [self.name(hint or op_type) for _ in range(n_out)]
        if isinstance(outs, str):
            outs = [outs]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + (hint or op_type)),
                                           domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


class Converter:
    def __init__(self, g: GGUF, mode: str = "gguf", block: int = 32, int8_activations: bool = False):
        # int8-channel keeps the output projection in exact GGUF blocks with int8 activations.
        self.g, self.mode, self.block = g, mode, block
        self.int8_act = int8_activations or mode == "int8-channel"
        a = self.arch = g.get("general.architecture")
        if a not in ("llama", "qwen2"):
            raise SystemExit(f"unsupported architecture {a!r} (llama and qwen2 only)")
        self.n_layer = int(g.get(f"{a}.block_count"))
        self.hidden = int(g.get(f"{a}.embedding_length"))
        self.ffn = int(g.get(f"{a}.feed_forward_length"))
        self.n_head = int(g.get(f"{a}.attention.head_count"))
        self.n_kv = int(g.get(f"{a}.attention.head_count_kv", self.n_head))
        self.head_dim = int(g.get(f"{a}.attention.key_length", self.hidden // self.n_head))
        self.ctx = int(g.get(f"{a}.context_length"))
        self.eps = float(g.get(f"{a}.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(g.get(f"{a}.rope.freq_base", 10000.0))
        self.rope_dim = int(g.get(f"{a}.rope.dimension_count", self.head_dim))
        self.vocab = int(g.tensors["token_embd.weight"].shape[1])
        self.tied = "output.weight" not in g.tensors
        if self.rope_dim != self.head_dim:
            raise SystemExit("partial rotary embeddings are not supported")
        if g.get(f"{a}.rope.scaling.type") not in (None, "none"):
            raise SystemExit("rope scaling is not supported")
        self.b = Builder()
        self.stats = {}  # encoding -> number of weights
        self._blocksums = {}
        self._row_codes = {}
        self._row_zero_point = None

    def weight(self, name) -> Weight:
        return self.g.weight(name, exact=self.mode in EXACT_MODES)

    def _count(self, kind, n):
        self.stats[kind] = self.stats.get(kind, 0) + n

    # ---------------------------------------------------------------- weights
    def linear(self, x, w: Weight, name: str, bias=None, out=None):
        """y = x @ W.T (+ bias) for a [N, K] weight."""
        b = self.b
        n, k = w.shape
        y_out = None if bias is not None else out
        if self.mode == "int8-channel" and name != "lm_head":
            y = self._linear_int8_channel(x, w, name, y_out)
        elif self.mode in EXACT_MODES and w.affine:
            y = self._linear_gguf(x, w, name, y_out if w.offset is None else None)
            if w.offset is not None:
                y = b.op("Add", [y, self._offset_term(x, w, name)], out=y_out)
        elif self.mode == "int8":
            dense = w.dense()
            codes, scale, zp = quantize_blocks_u8(dense, self.block)
            del dense
            nb = codes.shape[1]
            y = b.op("MatMulNBits",
                     [x, b.init(name + ".qweight", codes), b.init(name + ".scales", scale.reshape(n * nb)),
                      b.init(name + ".zero_points", zp.reshape(n * nb))],
                     out=y_out, domain=MS_DOMAIN, hint=name,
                     K=k, N=n, bits=8, block_size=self.block, accuracy_level=4)
            self._count("int8 MatMulNBits (block %d, accuracy_level 4)" % self.block, n * k)
        else:
            y = b.op("MatMul", [x, b.init(name + ".weight", np.ascontiguousarray(w.dense().T))],
                     out=y_out, hint=name)
            self._count("float32 MatMul", n * k)
        if bias is not None:
            y = b.op("Add", [y, b.init(name + ".bias", bias.astype(np.float32))], out=out)
        return y

    def linear_fused(self, x, ws, biases, name):
        """Several linears of the same input as one node (rows concatenated) and a Split,
        where their encodings allow it; else one node each."""
        b = self.b
        fused = fuse_rows(ws, self.mode == "gguf")  # int8-channel re-quantises the dense rows
        if fused is None:
            return [self.linear(x, w, f"{name}.{i}", bias) for i, (w, bias) in enumerate(zip(ws, biases))]
        bias = None
        if any(x is not None for x in biases):
            bias = np.concatenate([bb if bb is not None else np.zeros(w.shape[0], np.float32)
                                   for w, bb in zip(ws, biases)])
        y = self.linear(x, fused, name, bias)
        sizes = b.const_i64([w.shape[0] for w in ws])
        return b.op("Split", [y, sizes], n_out=len(ws), axis=-1, hint=name + ".split")

    def _linear_gguf(self, x, w: Weight, name, out):
        """MatMulNBits holding codes * scale exactly (the offset term is added by the caller).

        Codes spanning at most 16 values become one 4-bit code with zero point -lo. Wider
        codes c (5 to 8 bits) with float32 activations are split into nibbles of
        u = c - lo = 16 h + l:   c * s = 16 s (h - zh) + s (l - zl),   16 zh + zl = -lo,
        evaluated as one 4-bit MatMulNBits over K' = 2K on Concat(x, x); with int8
        activations they are one 8-bit node (zero point -lo)."""
        b = self.b
        n, k = w.shape
        blk = w.block
        nb = k // blk
        lo, hi = w.code_range
        u = (w.codes.astype(np.int16) - lo).astype(np.uint8).reshape(n, nb, blk)
        acc = 4 if self.int8_act else 0
        act = "int8" if self.int8_act else "float32"
        if hi - lo <= 15:
            bits, codes, scales, kk, inp = 4, u, w.scale, k, x
            zps = np.full((n, nb), -lo, np.uint8)
            self._count(f"4-bit MatMulNBits (exact GGUF blocks, {act} activations)", n * k)
        elif self.int8_act:
            bits, codes, scales, kk, inp = 8, u, w.scale, k, x
            zps = np.full((n, nb), -lo, np.uint8)
            self._count(f"8-bit MatMulNBits (exact GGUF blocks, {act} activations)", n * k)
        else:
            zh, zl = (-lo) >> 4, (-lo) & 15
            bits = 4
            codes = np.concatenate([u >> 4, u & 15], axis=1)  # [n, 2nb, blk]
            scales = np.concatenate([w.scale * 16.0, w.scale], axis=1)
            zps = np.concatenate([np.full((n, nb), zh, np.uint8), np.full((n, nb), zl, np.uint8)], axis=1)
            kk, inp = 2 * k, b.op("Concat", [x, x], axis=-1)
            self._count(f"2x4-bit MatMulNBits (exact GGUF blocks, 5-8 bit codes, {act} activations)", n * k)
        nbk = codes.shape[1]
        if bits == 4:
            packed = (codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)).astype(np.uint8)
            if nbk % 2:
                zps = np.pad(zps, ((0, 0), (0, 1)))
            zp_packed = (zps[:, 0::2] | (zps[:, 1::2] << 4)).astype(np.uint8)
        else:
            packed, zp_packed = codes, zps
        return b.op("MatMulNBits",
                    [inp, b.init(name + ".qweight", packed), b.init(name + ".scales", scales.astype(np.float32).reshape(-1)),
                     b.init(name + ".zero_points", zp_packed.reshape(-1))],
                    out=out, domain=MS_DOMAIN, hint=name, K=kk, N=n, bits=bits, block_size=blk, accuracy_level=acc)

    def _linear_int8_channel(self, x, w: Weight, name, out):
        """Integer GEMM: the weight re-quantised to symmetric int8 per output channel, the
        activations to int8 per row at run time (_int8_rows); one MatMulIntegerToFloat node.
        Products are summed in int32, so a row's result does not depend on the other rows
        of the call (batch composition, prompt chunking), unlike MatMulNBits' int8 kernels."""
        b = self.b
        n, k = w.shape
        dense = w.dense()
        amax = np.abs(dense).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.round(dense / scale[:, None]), -127, 127).astype(np.int8)
        del dense
        qx, sx = self._int8_rows(x, k)
        self._count("int8 MatMulIntegerToFloat (per-channel weights, per-row activations)", n * k)
        return b.op("MatMulIntegerToFloat",
                    [qx, b.init(name + ".qweight", np.ascontiguousarray(codes.T)), sx,
                     b.init(name + ".scales", scale), b.init(name + ".act_zero_point", np.array(128, np.uint8))],
                    out=out, domain=MS_DOMAIN, hint=name)

    def _int8_rows(self, x, k):
        """x float32 [B, S, K] -> (codes uint8 = round(x / s) + 128, s [B, S, 1] = max|row| / 127),
        shared by every linear of the same input: one blocked QuantizeLinear, a block being
        a whole row."""
        if x not in self._row_codes:
            b = self.b
            amax = b.op("ReduceMax", [b.op("Abs", [x]), b.const_i64([-1])], keepdims=1, hint="row_absmax")
            s = b.op("Max", [b.op("Div", [amax, b.const_f32(127.0)]), b.const_f32(1e-30)], hint="row_scale")
            if self._row_zero_point is None:
                self._row_zero_point = b.init("row_zero_point", np.array([128], np.uint8))
            zp = b.op("Expand", [self._row_zero_point, b.op("Shape", [s])])
            q = b.op("QuantizeLinear", [x, s, zp], axis=2, block_size=k, hint="row_codes")
            self._row_codes[x] = (q, s)
        return self._row_codes[x]

    def _offset_term(self, x, w: Weight, name):
        """sum over blocks of offset[n, j] * sum(x in block j): [.., nb] @ offset.T."""
        b = self.b
        n, k = w.shape
        nb = k // w.block
        key = (x, w.block)
        if key not in self._blocksums:
            xb = b.op("Reshape", [x, b.const_i64([0, 0, nb, w.block])])
            self._blocksums[key] = b.op("ReduceSum", [xb, b.const_i64([-1])], keepdims=0, hint="blocksum")
        self._count("float32 block offsets", n * nb)
        return b.op("MatMul", [self._blocksums[key], b.init(name + ".block_offsets", np.ascontiguousarray(w.offset.T))])

    def embedding(self, ids, w: Weight):
        b = self.b
        v, h = w.shape
        if self.mode == "fp32" or (self.mode in EXACT_MODES and not w.affine):
            self._count("float32 Gather", v * h)
            return b.op("Gather", [b.init("embed_tokens.weight", w.dense()), ids], axis=0)
        if self.mode in EXACT_MODES:
            blk = w.block
            codes, scale, offset = w.codes.reshape(v, h // blk, blk), w.scale[:, :, None], w.offset
            self._count("int8 Gather (exact GGUF blocks)", v * h)
        else:
            blk = self.block
            u8, scale, zp = quantize_blocks_u8(w.dense(), blk)
            codes = u8  # value = (code - zp) * scale = code * scale - zp * scale
            offset = -(zp.astype(np.float32) * scale)
            scale = scale[:, :, None]
            self._count("int8 Gather (block %d)" % blk, v * h)
        nb = codes.shape[1]
        rows = b.op("Gather", [b.init("embed_tokens.qweight", codes), ids], axis=0)  # [B,S,nb,blk]
        val = b.op("Mul", [b.op("Cast", [rows], to=TensorProto.FLOAT),
                           b.op("Gather", [b.init("embed_tokens.scales", scale), ids], axis=0)])
        if offset is not None:
            val = b.op("Add", [val, b.op("Gather", [b.init("embed_tokens.offsets", offset[:, :, None]), ids], axis=0)])
        flat = b.op("Reshape", [val, b.const_i64([0, 0, nb * blk])])
        if nb * blk != h:
            flat = b.op("Slice", [flat, b.const_i64([0]), b.const_i64([h]), b.const_i64([2])])
        return flat

    # ---------------------------------------------------------------- graph
    def rms(self, x, w, name):
        b = self.b
        return b.op("RMSNormalization", [x, b.init(name, w.astype(np.float32))], axis=-1,
                    epsilon=self.eps, hint=name)

    def build(self, lm_head_path):
        b, g = self.b, self.g
        H, nh, nkv, hd = self.hidden, self.n_head, self.n_kv, self.head_dim
        rep = nh // nkv
        L = self.n_layer
        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("logits_to_keep", i64, [1])]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "kept_positions", self.vocab]),
                   helper.make_tensor_value_info("hidden_states", f32, ["batch_size", "sequence_length", H])]
        for i in range(L):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", f32, ["batch_size", nkv, "past_sequence_length", hd]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", f32, ["batch_size", nkv, "total_sequence_length", hd]))

        # --- embeddings (tied models: the same matrix is the output projection)
        emb = self.weight("token_embd.weight")
        x = self.embedding("input_ids", emb)
        if self.tied:
            self._write_lm_head(emb, lm_head_path)
            lm_w = emb
        del emb

        # --- rotary tables [ctx, hd] in the rotate-half layout, gathered by position
        inv = self.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(self.ctx, dtype=np.float64)[:, None] * inv[None, :]
        ang = np.concatenate([ang, ang], axis=1)
        cos = b.op("Gather", [b.init("rope.cos", np.cos(ang).astype(np.float32)), "position_ids"], axis=0)
        sin = b.op("Gather", [b.init("rope.sin", np.sin(ang).astype(np.float32)), "position_ids"], axis=0)
        del ang
        cos = b.op("Unsqueeze", [cos, b.const_i64([1])])  # [B,1,S,hd]
        sin = b.op("Unsqueeze", [sin, b.const_i64([1])])

        # --- attention bias [B,1,rep*S,T]: 0 where allowed, float32 min elsewhere
        ids_shape = b.op("Shape", ["input_ids"])
        S = b.op("Gather", [ids_shape, b.const_i64(1)], axis=0)
        T = b.op("Gather", [b.op("Shape", ["attention_mask"]), b.const_i64(1)], axis=0)
        past = b.op("Sub", [T, S])
        qpos = b.op("Add", [b.op("Range", [b.const_i64(0), S, b.const_i64(1)]), past])
        kpos = b.op("Range", [b.const_i64(0), T, b.const_i64(1)])
        causal = b.op("LessOrEqual", [b.op("Unsqueeze", [kpos, b.const_i64([0])]),
                                      b.op("Unsqueeze", [qpos, b.const_i64([1])])])  # [S,T]
        keep = b.op("Cast", [b.op("Unsqueeze", ["attention_mask", b.const_i64([1, 2])])], to=TensorProto.BOOL)
        allowed = b.op("And", [causal, keep])  # [B,1,S,T]
        bias = b.op("Where", [allowed, b.const_f32(0.0), b.const_f32(float(np.finfo(np.float32).min))])
        bias = b.op("Tile", [bias, b.const_i64([1, 1, rep, 1])], hint="attn_bias")  # row r*S+s -> s
        scale = b.const_f32(float(1.0 / np.sqrt(hd)))
        half = hd // 2

        def rope(t):  # t [B, heads, S, hd]
            x1 = b.op("Slice", [t, b.const_i64([0]), b.const_i64([half]), b.const_i64([3])])
            x2 = b.op("Slice", [t, b.const_i64([half]), b.const_i64([hd]), b.const_i64([3])])
            rot = b.op("Concat", [b.op("Neg", [x2]), x1], axis=3)
            return b.op("Add", [b.op("Mul", [t, cos]), b.op("Mul", [rot, sin])])

        t0 = time.time()
        for i in range(L):
            p = f"blk.{i}."
            n = f"layers.{i}"
            h = self.rms(x, g.tensor(p + "attn_norm.weight"), n + ".input_layernorm.weight")
            wq, wk = self.weight(p + "attn_q.weight"), self.weight(p + "attn_k.weight")
            bq = g.tensor(p + "attn_q.bias") if p + "attn_q.bias" in g.tensors else None
            bk = g.tensor(p + "attn_k.bias") if p + "attn_k.bias" in g.tensors else None
            bv = g.tensor(p + "attn_v.bias") if p + "attn_v.bias" in g.tensors else None
            if self.arch == "llama":
                wq = wq.permute_rows(lambda a: unpermute_rope_rows(a, nh))
                wk = wk.permute_rows(lambda a: unpermute_rope_rows(a, nkv))
                bq = None if bq is None else unpermute_rope_rows(bq, nh)
                bk = None if bk is None else unpermute_rope_rows(bk, nkv)
            wv = self.weight(p + "attn_v.weight")
            q, k, v = self.linear_fused(h, [wq, wk, wv], [bq, bk, bv], n + ".self_attn.qkv_proj")
            del wq, wk, wv
            # q: [B,S,nh*hd] -> [B,nh,S,hd]; k,v: [B,S,nkv*hd] -> [B,nkv,S,hd]
            q = b.op("Transpose", [b.op("Reshape", [q, b.const_i64([0, 0, nh, hd])])], perm=[0, 2, 1, 3])
            k = b.op("Transpose", [b.op("Reshape", [k, b.const_i64([0, 0, nkv, hd])])], perm=[0, 2, 1, 3])
            v = b.op("Transpose", [b.op("Reshape", [v, b.const_i64([0, 0, nkv, hd])])], perm=[0, 2, 1, 3])
            q = b.op("Mul", [rope(q), scale])
            k = rope(k)
            kc = b.op("Concat", [f"past_key_values.{i}.key", k], axis=2, out=f"present.{i}.key")
            vc = b.op("Concat", [f"past_key_values.{i}.value", v], axis=2, out=f"present.{i}.value")
            # grouped-query attention: heads h = g*rep + r share KV head g; fold (r, s) into rows
            qg = b.op("Reshape", [q, b.const_i64([0, nkv, -1, hd])])  # [B,nkv,rep*S,hd]
            sc = b.op("MatMul", [qg, b.op("Transpose", [kc], perm=[0, 1, 3, 2])])  # [B,nkv,rep*S,T]
            pr = b.op("Softmax", [b.op("Add", [sc, bias])], axis=-1)
            att = b.op("MatMul", [pr, vc])  # [B,nkv,rep*S,hd] == [B,nh,S,hd]
            att = b.op("Reshape", [att, b.const_i64([0, nh, -1, hd])])
            att = b.op("Reshape", [b.op("Transpose", [att], perm=[0, 2, 1, 3]), b.const_i64([0, 0, nh * hd])])
            o = self.linear(att, self.weight(p + "attn_output.weight"), n + ".self_attn.o_proj")
            x = b.op("Add", [x, o])
            h = self.rms(x, g.tensor(p + "ffn_norm.weight"), n + ".post_attention_layernorm.weight")
            gate, up = self.linear_fused(h, [self.weight(p + "ffn_gate.weight"), self.weight(p + "ffn_up.weight")],
                                         [None, None], n + ".mlp.gate_up_proj")
            act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
            d = self.linear(act, self.weight(p + "ffn_down.weight"), n + ".mlp.down_proj")
            x = b.op("Add", [x, d])
            if i == 0 or (i + 1) % 6 == 0 or i == L - 1:
                log(f"layer {i + 1}/{L} done ({time.time() - t0:.1f} s, peak RSS {peak_rss_mb():.0f} MB)")

        hs = self.rms(x, g.tensor("output_norm.weight"), "norm.weight")
        b.op("Identity", [hs], out="hidden_states")
        # the last logits_to_keep positions (Slice clamps to the sequence)
        last = b.op("Slice", [hs, b.op("Neg", ["logits_to_keep"]), b.const_i64([2 ** 62]), b.const_i64([1])])  # [B,K,H]
        if not self.tied:
            lm_w = self.weight("output.weight")
            self._write_lm_head(lm_w, lm_head_path)
        self.linear(last, lm_w, "lm_head", out="logits")  # [B,K,V]
        del lm_w

        graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, b.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="ragtune gguf_to_onnx")
        model.ir_version = 10
        return model

    def _write_lm_head(self, w: Weight, path):
        w.dense().astype("<f2").tofile(path)


# ------------------------------------------------------------------ tokenizer
def build_tokenizer(g: GGUF) -> dict:
    model = g.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"tokenizer model {model!r} not supported (byte-level BPE 'gpt2' only)")
    pre = g.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise SystemExit(f"pre-tokenizer {pre!r} not supported: add its regex to PRE_TOKENIZERS")
    tokens = g.get("tokenizer.ggml.tokens")
    types = g.get("tokenizer.ggml.token_type")
    merges = g.get("tokenizer.ggml.merges")
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty == TT_UNUSED:
            continue  # [PAD...] filler rows of the embedding matrix
        vocab[tok] = i
        if ty in (TT_CONTROL, TT_USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == TT_CONTROL})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": NORMALIZERS.get(pre),
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [m.split(" ", 1) for m in merges]},
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_description(c: Converter, tok: dict) -> dict:
    """model.json: what the conversion made (shapes, special ids, graph inputs and outputs)."""
    g = c.g
    bos = g.get("tokenizer.ggml.bos_token_id")
    outputs = ["logits", "hidden_states"] + [f"present.{i}.{k}" for i in range(c.n_layer) for k in ("key", "value")]
    return {
        "format": "ragtune-decoder-with-past/1",
        "source": source(g),
        "architecture": c.arch,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv,
        "head_dim": c.head_dim,
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "vocab_size": c.vocab,
        "tokenizer_vocab_size": len(tok["model"]["vocab"]),
        "context_length": c.ctx,
        "rope_theta": c.rope_base,
        "rms_norm_eps": c.eps,
        "tie_word_embeddings": c.tied,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": int(g.get("tokenizer.ggml.eos_token_id")),
        "stop_token_ids": stop_token_ids(g),
        "pad_token_id": g.get("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": g.get("tokenizer.chat_template"),
        "onnx": {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask", "position_ids", "logits_to_keep"]
                      + [f"past_key_values.{i}.{k}" for i in range(c.n_layer) for k in ("key", "value")],
            "outputs": outputs,
            "logits": "the last logits_to_keep positions: [batch, logits_to_keep, vocab]; left-pad batches",
            "hidden_states": "final-normed hidden states of every input position: [batch, seq, hidden]",
            "kv_cache": "[batch, num_key_value_heads, past, head_dim] float32; first step past = 0",
            "weights": c.mode,
            "activations": {"int8": "int8", "int8-channel": "int8 rows"}.get(
                c.mode, "int8" if c.mode == "gguf" and c.int8_act else "float32"),
            "weight_encodings": {k: int(v) for k, v in c.stats.items()},
        },
        "lm_head": {"file": "lm_head.f16", "dtype": "float16", "byte_order": "little",
                    "shape": [c.vocab, c.hidden], "layout": "row-major [vocab, hidden]"},
    }


def build_config(c: Converter, tok: dict) -> dict:
    """config.json: the model's entry in ragtune's catalog (src/models/config.rs), what
    register_model_from_files() stores."""
    return {
        "kind": "generator",
        # The GGUF's Jinja template, spelled out: it inserts default_system when the
        # first message is not a system message.
        "chat_format": {
            "message": "<|im_start|>{role}\n{content}<|im_end|>\n",
            "generation_prompt": "<|im_start|>assistant\n",
            "default_system": DEFAULT_SYSTEM[c.arch],
        },
        "stop_token_ids": stop_token_ids(c.g),
        "context_window": c.ctx,
        # Logits past the tokenizer's vocabulary (padding rows of the output matrix) are
        # never chosen.
        "vocab_size": len(tok["model"]["vocab"]),
        "source": source(c.g),
    }


def source(g: GGUF) -> dict:
    return {"gguf": os.path.basename(g.path), "sha256": sha256(g.path), "name": g.get("general.name"),
            "license": g.get("general.license")}


def stop_token_ids(g: GGUF) -> list:
    tid = {t: i for i, t in enumerate(g.get("tokenizer.ggml.tokens"))}
    eos = int(g.get("tokenizer.ggml.eos_token_id"))
    return [eos] + [tid[t] for t in ("<|im_end|>", "<|endoftext|>") if t in tid and tid[t] != eos]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--weights", choices=("gguf", "int8-channel", "int8", "fp32"), default="gguf",
                    help="gguf: the GGUF blocks exactly (default); int8-channel: integer GEMM, int8 weights per "
                         "channel and activations per row; int8: 8-bit blocks with int8 activations; fp32")
    ap.add_argument("--no-quantize", action="store_true", help="same as --weights fp32")
    ap.add_argument("--int8-activations", action="store_true",
                    help="--weights gguf: let MatMulNBits quantise activations to int8 blocks (accuracy_level 4)")
    ap.add_argument("--block-size", type=int, default=32, help="block along the input axis for --weights int8")
    args = ap.parse_args()
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    g = GGUF(args.gguf)
    c = Converter(g, "fp32" if args.no_quantize else args.weights, args.block_size, args.int8_activations)
    log(f"{c.arch}: {c.n_layer} layers, hidden {c.hidden}, heads {c.n_head}/{c.n_kv}, vocab {c.vocab}")

    tok = build_tokenizer(g)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)

    lm_tmp = os.path.join(args.out, "lm_head.f16.part")
    model = c.build(lm_tmp)
    del c.g.tensors
    log(f"graph built: {len(model.graph.node)} nodes, {c.b.init_bytes / 1e6:.0f} MB of weights")
    onnx_path = os.path.join(args.out, "model.onnx")
    tmp = onnx_path + ".part"
    for stale in (onnx_path + ".data", tmp + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    if c.b.init_bytes > 1_900_000_000:
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, tmp)
    del model
    os.replace(tmp, onnx_path)
    os.replace(lm_tmp, os.path.join(args.out, "lm_head.f16"))
    for kind, count in c.stats.items():
        log(f"{count / 1e6:8.2f} M weights as {kind}")
    description = build_description(c, tok)
    description["conversion"] = {"seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak_rss_mb())}
    with open(os.path.join(args.out, "model.json"), "w", encoding="utf-8") as f:
        json.dump(description, f, ensure_ascii=False, indent=1)
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(build_config(c, tok), f, ensure_ascii=False, indent=1)
    log(f"done in {time.time() - t0:.1f} s, peak RSS {peak_rss_mb():.0f} MB -> {args.out}")


if __name__ == "__main__":
    main()
