#!/usr/bin/env python3
"""Independent numpy reference for llama/qwen2 GGUF models: no KV cache, full recompute.

Written separately from scripts/gguf_to_onnx.py on purpose, so that the two check each other:
  * its own dequantisation of the GGUF block formats (Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0,
    F16, F32), following ggml's C reference code, instead of the `gguf` package's helpers
    (the `gguf` package is only used to locate tensors and metadata in the file);
  * llama.cpp's own RoPE conventions on the weights exactly as stored in the GGUF: "normal"
    rope on adjacent pairs (x[2i], x[2i+1]) for `llama` (whose Q/K rows the GGUF writer
    permuted), "neox" rope on halves (x[i], x[i + d/2]) for `qwen2`. The converter instead
    undoes the permutation and uses the Hugging Face rotate-half form for both;
  * plain attention over the whole sequence with an explicit causal mask and GQA head
    sharing by index (head h reads KV head h // (heads / kv_heads)).

Usage as a library: `Reference(path).logits(ids)` -> float32 [vocab] logits of the last
position, `.greedy(ids, n)` -> n greedy token ids. As a script it prints the greedy
continuation of a token-id list: `gguf_reference.py MODEL.gguf 1 2 3 --n 24`.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader

# ggml type ids (ggml.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 6, 8, 12, 14
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}


def _f16(b, off):
    return b[:, off:off + 2].copy().view(np.float16).astype(np.float32)  # [n, 1]


def dequant_blocks(raw: np.ndarray, qtype: int) -> np.ndarray:
    """raw: uint8 [n_blocks, block_bytes] -> float32 [n_blocks, block_values]."""
    b = raw
    if qtype == Q8_0:
        d = _f16(b, 0)
        return d * b[:, 2:34].view(np.int8).astype(np.float32)
    if qtype == Q4_0:
        d = _f16(b, 0)
        qs = b[:, 2:18]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32) - 8.0
        return d * q
    if qtype == Q4_1:
        d, m = _f16(b, 0), _f16(b, 2)
        qs = b[:, 4:20]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)
        return d * q + m
    if qtype == Q5_0:
        d = _f16(b, 0)
        qh = b[:, 2:6].copy().view("<u4").astype(np.uint32)  # [n, 1]
        qs = b[:, 6:22].astype(np.uint32)
        j = np.arange(16, dtype=np.uint32)
        xh0 = ((qh >> j) << 4) & 0x10
        xh1 = (qh >> (j + 12)) & 0x10
        x0 = ((qs & 0x0F) | xh0).astype(np.int32) - 16
        x1 = ((qs >> 4) | xh1).astype(np.int32) - 16
        return d * np.concatenate([x0, x1], axis=1).astype(np.float32)
    if qtype == Q4_K:
        n = b.shape[0]
        d, dmin = _f16(b, 0), _f16(b, 2)
        sc = b[:, 4:16].astype(np.int32)
        qs = b[:, 16:144]
        scales = np.zeros((n, 8), np.int32)
        mins = np.zeros((n, 8), np.int32)
        for j in range(8):
            if j < 4:
                scales[:, j] = sc[:, j] & 63
                mins[:, j] = sc[:, j + 4] & 63
            else:
                scales[:, j] = (sc[:, j + 4] & 0xF) | ((sc[:, j - 4] >> 6) << 4)
                mins[:, j] = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
        out = np.empty((n, 256), np.float32)
        for c in range(4):  # 4 chunks of 64 values, 32 bytes of qs each
            q = qs[:, 32 * c:32 * c + 32]
            for half, vals in enumerate((q & 0xF, q >> 4)):
                s = 2 * c + half
                out[:, 64 * c + 32 * half:64 * c + 32 * half + 32] = (
                    d * scales[:, s:s + 1] * vals.astype(np.float32) - dmin * mins[:, s:s + 1])
        return out
    if qtype == Q6_K:
        n = b.shape[0]
        ql = b[:, 0:128].astype(np.int32)
        qh = b[:, 128:192].astype(np.int32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b, 208)
        out = np.empty((n, 256), np.float32)
        for h in range(2):  # two halves of 128 values
            l_ = ql[:, 64 * h:64 * h + 64]
            hh = qh[:, 32 * h:32 * h + 32]
            s = sc[:, 8 * h:8 * h + 8]
            q1 = ((l_[:, 0:32] & 0xF) | (((hh >> 0) & 3) << 4)) - 32
            q2 = ((l_[:, 32:64] & 0xF) | (((hh >> 2) & 3) << 4)) - 32
            q3 = ((l_[:, 0:32] >> 4) | (((hh >> 4) & 3) << 4)) - 32
            q4 = ((l_[:, 32:64] >> 4) | (((hh >> 6) & 3) << 4)) - 32
            for k, q in enumerate((q1, q2, q3, q4)):
                for sub in range(2):  # 16 values share one scale
                    col = 128 * h + 32 * k + 16 * sub
                    out[:, col:col + 16] = d * s[:, 2 * k + sub:2 * k + sub + 1] * q[:, 16 * sub:16 * sub + 16]
        return out
    raise ValueError(f"unsupported ggml type {qtype}")


def tensor_f32(t) -> np.ndarray:
    """A GGUF tensor as float32, numpy shape = reversed ggml ne (rows = ne[1], cols = ne[0])."""
    qtype = int(t.tensor_type)
    shape = tuple(int(x) for x in reversed(t.shape))
    if qtype == F32:
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    if qtype == F16:
        return np.asarray(t.data).view(np.float16).astype(np.float32).reshape(shape)
    nvals, nbytes = BLOCK[qtype]
    raw = np.asarray(t.data, dtype=np.uint8).reshape(-1, nbytes)
    return dequant_blocks(raw, qtype).reshape(shape)


class Reference:
    def __init__(self, path: str):
        r = GGUFReader(path)
        f = {k: v.contents() for k, v in r.fields.items()
             if not k.startswith("tokenizer.ggml.") and k != "tokenizer.chat_template"}
        self.arch = a = f["general.architecture"]
        self.n_layer = f[f"{a}.block_count"]
        self.n_embd = f[f"{a}.embedding_length"]
        self.n_head = f[f"{a}.attention.head_count"]
        self.n_head_kv = f[f"{a}.attention.head_count_kv"]
        self.eps = np.float32(f[f"{a}.attention.layer_norm_rms_epsilon"])
        self.base = float(f.get(f"{a}.rope.freq_base", 10000.0))
        self.head_dim = self.n_embd // self.n_head
        self.neox = a == "qwen2"  # llama.cpp: LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX, llama -> NORM
        if a not in ("llama", "qwen2"):
            raise ValueError(a)
        self.w = {t.name: tensor_f32(t) for t in r.tensors}
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def _rms(self, x, w):
        x64 = x.astype(np.float32)
        return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + self.eps)) * w

    def _rope(self, x, pos):
        # x [n_tokens, heads, head_dim]; ggml: theta = pos * base^(-2i/d) for pair i
        d = self.head_dim
        i = np.arange(d // 2, dtype=np.float64)
        theta = pos[:, None].astype(np.float64) * self.base ** (-2.0 * i / d)  # [n, d/2]
        c = np.cos(theta).astype(np.float32)[:, None, :]
        s = np.sin(theta).astype(np.float32)[:, None, :]
        y = np.empty_like(x)
        if self.neox:
            x0, x1 = x[..., : d // 2], x[..., d // 2:]
            y[..., : d // 2] = x0 * c - x1 * s
            y[..., d // 2:] = x0 * s + x1 * c
        else:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            y[..., 0::2] = x0 * c - x1 * s
            y[..., 1::2] = x0 * s + x1 * c
        return y

    def hidden(self, ids) -> np.ndarray:
        """Final-normed hidden states [n_tokens, n_embd] of the token sequence."""
        w = self.w
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        pos = np.arange(n)
        x = w["token_embd.weight"][ids]
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        causal = np.triu(np.full((n, n), -np.inf, np.float32), k=1)
        for L in range(self.n_layer):
            p = f"blk.{L}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = h @ w[p + "attn_q.weight"].T
            k = h @ w[p + "attn_k.weight"].T
            v = h @ w[p + "attn_v.weight"].T
            if p + "attn_q.bias" in w:
                q = q + w[p + "attn_q.bias"]
                k = k + w[p + "attn_k.bias"]
                v = v + w[p + "attn_v.bias"]
            q = self._rope(q.reshape(n, nh, hd), pos)
            k = self._rope(k.reshape(n, nkv, hd), pos)
            v = v.reshape(n, nkv, hd)
            out = np.empty((n, nh, hd), np.float32)
            for hh in range(nh):
                kv = hh // (nh // nkv)
                s = (q[:, hh, :] @ k[:, kv, :].T) / np.float32(np.sqrt(hd)) + causal
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                out[:, hh, :] = s @ v[:, kv, :]
            x = x + out.reshape(n, nh * hd) @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            u = h @ w[p + "ffn_up.weight"].T
            x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
        return self._rms(x, w["output_norm.weight"])

    def logits(self, ids) -> np.ndarray:
        return self.hidden(ids)[-1] @ self.w["output.weight"].T

    def greedy(self, ids, n: int, stop=()) -> list:
        ids = list(ids)
        out = []
        for _ in range(n):
            t = int(np.argmax(self.logits(ids)))
            out.append(t)
            ids.append(t)
            if t in stop:
                break
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("ids", type=int, nargs="+")
    ap.add_argument("--n", type=int, default=24)
    a = ap.parse_args()
    print(Reference(a.gguf).greedy(a.ids, a.n))


if __name__ == "__main__":
    sys.exit(main())
