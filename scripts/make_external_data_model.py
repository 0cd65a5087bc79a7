"""Writes the hex of a tiny ONNX graph whose one initializer keeps its data in an
"external file" named relative to the server's data directory (PG_VERSION): the model
tests/pg_regress/sql/security_onnx.sql registers to show that such bytes are refused
before ONNX Runtime could read the file. ONNX itself resolves it as external data
(checked below with onnx.external_data_helper).

    venv-gguf/bin/python scripts/make_external_data_model.py > hex
"""
import onnx
from onnx import TensorProto, helper, external_data_helper

weight = TensorProto()
weight.name = "w"
weight.data_type = TensorProto.UINT8
weight.dims.append(3)
weight.data_location = TensorProto.EXTERNAL
for key, value in (("location", "PG_VERSION"), ("offset", "0"), ("length", "3")):
    entry = weight.external_data.add()
    entry.key, entry.value = key, value
assert external_data_helper.uses_external_data(weight)
graph = helper.make_graph(
    [helper.make_node("Identity", ["w"], ["y"])], "reads_a_server_file", [],
    [helper.make_tensor_value_info("y", TensorProto.UINT8, [3])], initializer=[weight])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
print(model.SerializeToString().hex())
