"""Writes a minimal decoder-with-past ONNX graph that has no `hidden_states` output, as
Hugging Face optimum / onnx-community exports are: registering it works, training a
generator adapter on it must fail with a clear error. One layer, one key/value head of
width 2, a vocabulary of 16; logits and cache entries are looked up from token ids.
The tokenizer and config are SmolLM2's (token ids past 16 are never run by the tests).

    make_decoder_without_hidden_states.py SMOLLM2_DIR OUT_DIR
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, HEADS, HEAD_DIM = 16, 1, 2


def graph():
    rng = np.random.default_rng(0)
    logits_table = numpy_helper.from_array(rng.standard_normal((VOCAB, VOCAB)).astype(np.float32), "logits_table")
    kv_table = numpy_helper.from_array(rng.standard_normal((VOCAB, HEADS, HEAD_DIM)).astype(np.float32), "kv_table")
    nodes = [
        helper.make_node("Gather", ["logits_table", "input_ids"], ["logits"]),  # [b, s, V]
        helper.make_node("Gather", ["kv_table", "input_ids"], ["kv"]),  # [b, s, heads, d]
        helper.make_node("Transpose", ["kv"], ["kv_t"], perm=[0, 2, 1, 3]),  # [b, heads, s, d]
        helper.make_node("Concat", ["past_key_values.0.key", "kv_t"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "kv_t"], ["present.0.value"], axis=2),
    ]
    cache = ["batch", HEADS, "past", HEAD_DIM]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
        helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache),
    ]
    present = ["batch", HEADS, "total", HEAD_DIM]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, present),
        helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, present),
    ]
    g = helper.make_graph(nodes, "decoder_without_hidden_states", inputs, outputs, [logits_table, kv_table])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(graph(), out / "model.onnx")
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((source / "config.json").read_text())
    config.pop("vocab_size", None)
    (out / "config.json").write_text(json.dumps(config, indent=1))


if __name__ == "__main__":
    main()
