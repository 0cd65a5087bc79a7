"""Two tiny ONNX graphs whose outputs are not finite, for the tests that embed() and
generate() refuse them (src/models/embed.rs, src/models/generate.rs).

Usage: make_nonfinite_models.py OUT_DIR   (needs the `onnx` package)
  nan_embedder.onnx: input_ids int64 [batch, tokens] -> last_hidden_state float
    [batch, tokens, 1] = sqrt(-input_ids): NaN for every token id above 0.
  inf_embedder.onnx: the same with 1 / (input_ids - input_ids): +inf.
"""
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def embedder(nodes, name):
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT)]
        + nodes
        + [helper.make_node("Unsqueeze", ["y"], ["last_hidden_state"], axes=[2])],
        name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main(out):
    out = Path(out)
    nan = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Sqrt", ["n"], ["y"])]
    inf = [
        helper.make_node("Sub", ["x", "x"], ["z"]),
        helper.make_node("Reciprocal", ["z"], ["y"]),
    ]
    (out / "nan_embedder.onnx").write_bytes(embedder(nan, "nan"))
    (out / "inf_embedder.onnx").write_bytes(embedder(inf, "inf"))


if __name__ == "__main__":
    main(sys.argv[1])
