//! Checks the bytes of an ONNX model before ONNX Runtime reads them, since a model is
//! data a database role hands in, not code the server trusts.
//!
//! - No tensor may keep its data outside the model (`data_location = EXTERNAL` or any
//!   `external_data` entry): ONNX Runtime would read that data from a file named relative
//!   to the backend's working directory, the data directory (`PG_VERSION`, `global/1260`,
//!   any table's heap file), or from the memory address its in-memory marker names.
//! - Operators and opset imports come only from the standard domains and `com.microsoft`
//!   (ONNX Runtime's contrib operators, which the generators use).
//! - Sizes are bounded: the bytes, the number of nodes, attributes, tensors and graphs, and
//!   how deep subgraphs nest.
//! - ORT-format files are refused: ONNX Runtime reads them as flatbuffers, past this check.
//!
//! The schema is the public onnx-ml.proto (proto2; the field numbers here are its own),
//! declared for prost with only the fields the check reads: prost skips the others, tensor
//! data included, without copying them.
//!
//! Memory stays bounded whatever the bytes say: each message is decoded one level at a
//! time, its child messages kept as slices of the model. Before a level is decoded, a
//! second declaration of it whose children are empty (zero-sized, so holding them
//! allocates nothing) counts them, and the count is charged to the model's limit. A
//! message field that is not repeated is collected as a list of its occurrences too:
//! protobuf merges them into one message, and a refusal of any occurrence covers the
//! merged one, whose fields each come from one of them.

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, ErrorKind};

/// What a model may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    /// Nodes, attributes, tensors, graphs, functions and opset imports, all together.
    pub max_items: usize,
    /// Subgraphs (of If, Loop, Scan) inside subgraphs; the main graph is depth 1.
    pub max_depth: usize,
}

/// ONNX Runtime reads a model from memory only up to 2 GiB - 1 bytes (protobuf's limit
/// for one message; larger models keep their weights in external files, refused here).
/// The largest generator here is 0.7 GB. Real graphs have thousands of nodes (the Qwen
/// generator about 3,000 items in all) and nest a few levels deep.
pub const LIMITS: Limits = Limits { max_bytes: i32::MAX as usize, max_items: 1_000_000, max_depth: 16 };

/// Operator domains a model may use: standard ONNX ("" and its alias "ai.onnx"), the
/// standard ONNX-ML operators ("ai.onnx.ml", which ONNX Runtime's CPU provider
/// implements) and ONNX Runtime's contrib operators ("com.microsoft"). Nothing else is
/// registered in ragtune's sessions.
pub const ALLOWED_DOMAINS: [&str; 4] = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

/// What the check walked through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ModelSummary {
    pub graphs: usize,
    pub nodes: usize,
    pub tensors: usize,
    pub functions: usize,
}

/// Checks `model` against [`LIMITS`].
pub fn check_model_bytes(model: &[u8]) -> Result<ModelSummary, Error> {
    check_model_bytes_within(model, &LIMITS)
}

pub fn check_model_bytes_within(model: &[u8], limits: &Limits) -> Result<ModelSummary, Error> {
    if model.len() > limits.max_bytes {
        return Err(too_large(format!("{} bytes, more than {}", model.len(), limits.max_bytes)));
    }
    // ONNX Runtime's test for its own format (the flatbuffer identifier at offset 4).
    if model.len() > 8 && &model[4..8] == b"ORTM" {
        return Err(refused("it is in ORT format; only ONNX (protobuf) models are accepted".into()));
    }
    let mut walk = Walk { limits, items: 0, summary: ModelSummary::default() };
    walk.model(Bytes::copy_from_slice(model))?;
    Ok(walk.summary)
}

fn refused(reason: String) -> Error {
    Error::new(ErrorKind::InvalidParameterValue, format!("the ONNX model is not allowed: {reason}"))
}

fn too_large(reason: String) -> Error {
    Error::new(ErrorKind::ProgramLimitExceeded, format!("the ONNX model is too large: {reason}"))
}

fn unreadable(e: prost::DecodeError) -> Error {
    Error::new(ErrorKind::DataException, "could not load the ONNX model").with_detail(e.to_string())
}

/// A child message that is only counted.
#[derive(Clone, PartialEq, Message)]
struct Skip {}

/// A message decoded one level at a time, with its counting twin.
trait Level: Message + Default {
    type Count: Message + Default + Children;
}

trait Children {
    fn children(&self) -> usize;
}

/// Declares a level: `$name` with its scalar fields and its child messages as slices of
/// the model, and `$count` with the same children as [`Skip`]s.
macro_rules! level {
    ($(#[$doc:meta])* $name:ident / $count:ident {
        $(#[prost($($attr:tt)*)] $field:ident: $ty:ty,)*
        children { $($child:ident = $tag:tt,)* }
    }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Message)]
        struct $name {
            $(#[prost($($attr)*)] $field: $ty,)*
            $(#[prost(bytes = "bytes", repeated, tag = $tag)] $child: Vec<Bytes>,)*
        }

        #[derive(Clone, PartialEq, Message)]
        struct $count {
            $(#[prost(message, repeated, tag = $tag)] $child: Vec<Skip>,)*
        }

        impl Children for $count {
            fn children(&self) -> usize {
                0 $(+ self.$child.len())*
            }
        }

        impl Level for $name {
            type Count = $count;
        }
    };
}

level! {
    /// ModelProto.
    Model / ModelCount {
        children { graph = "7", opset_import = "8", training_info = "20", functions = "25", }
    }
}

level! {
    /// GraphProto.
    Graph / GraphCount {
        #[prost(string, tag = "2")]
        name: String,
        children { node = "1", initializer = "5", sparse_initializer = "15", }
    }
}

level! {
    /// NodeProto.
    Node / NodeCount {
        #[prost(string, tag = "3")]
        name: String,
        #[prost(string, tag = "4")]
        op_type: String,
        #[prost(string, tag = "7")]
        domain: String,
        children { attribute = "5", }
    }
}

level! {
    /// AttributeProto: t, g and sparse_tensor hold one value, the others lists.
    Attribute / AttributeCount {
        #[prost(string, tag = "1")]
        name: String,
        children { t = "5", g = "6", tensors = "10", graphs = "11", sparse_tensor = "22", sparse_tensors = "23", }
    }
}

level! {
    /// FunctionProto (a model-local function).
    Function / FunctionCount {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "10")]
        domain: String,
        children { node = "7", opset_import = "9", attribute_proto = "11", }
    }
}

level! {
    /// TrainingInfoProto.
    TrainingInfo / TrainingInfoCount {
        children { initialization = "1", algorithm = "2", }
    }
}

level! {
    /// SparseTensorProto.
    SparseTensor / SparseTensorCount {
        children { values = "1", indices = "2", }
    }
}

/// TensorProto: a leaf whose data fields are skipped.
#[derive(Clone, PartialEq, Message)]
struct Tensor {
    #[prost(string, tag = "8")]
    name: String,
    /// StringStringEntryProtos naming the file (location, offset, length, checksum).
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<Skip>,
    /// DEFAULT = 0, EXTERNAL = 1.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// OperatorSetIdProto.
#[derive(Clone, PartialEq, Message)]
struct OperatorSetId {
    #[prost(string, tag = "1")]
    domain: String,
}

struct Walk<'a> {
    limits: &'a Limits,
    items: usize,
    summary: ModelSummary,
}

impl Walk<'_> {
    /// Decodes one level after charging its children to the limit.
    fn read<M: Level>(&mut self, bytes: &Bytes) -> Result<M, Error> {
        let count = M::Count::decode(bytes.clone()).map_err(unreadable)?;
        self.items = self.items.saturating_add(count.children());
        if self.items > self.limits.max_items {
            return Err(too_large(format!(
                "more than {} nodes, attributes, tensors and graphs",
                self.limits.max_items
            )));
        }
        M::decode(bytes.clone()).map_err(unreadable)
    }

    fn model(&mut self, bytes: Bytes) -> Result<(), Error> {
        let model: Model = self.read(&bytes)?;
        for opset in &model.opset_import {
            let opset = OperatorSetId::decode(opset.clone()).map_err(unreadable)?;
            check_domain(&opset.domain, || "the model imports".into())?;
        }
        for graph in &model.graph {
            self.graph(graph, 1)?;
        }
        for info in &model.training_info {
            let info: TrainingInfo = self.read(info)?;
            for graph in info.initialization.iter().chain(&info.algorithm) {
                self.graph(graph, 1)?;
            }
        }
        for function in &model.functions {
            self.function(function)?;
        }
        Ok(())
    }

    fn graph(&mut self, bytes: &Bytes, depth: usize) -> Result<(), Error> {
        if depth > self.limits.max_depth {
            return Err(refused(format!("its subgraphs are nested more than {} deep", self.limits.max_depth)));
        }
        let graph: Graph = self.read(bytes)?;
        self.summary.graphs += 1;
        let place = |what: &str, name: &str| format!("{what} \"{name}\" of graph \"{}\"", graph.name);
        for tensor in &graph.initializer {
            self.tensor(tensor, |name| place("initializer", name))?;
        }
        for sparse in &graph.sparse_initializer {
            self.sparse_tensor(sparse, |name| place("sparse initializer", name))?;
        }
        for node in &graph.node {
            self.node(node, depth)?;
        }
        Ok(())
    }

    fn node(&mut self, bytes: &Bytes, depth: usize) -> Result<(), Error> {
        let node: Node = self.read(bytes)?;
        self.summary.nodes += 1;
        let label = format!("node \"{}\" ({})", node.name, node.op_type);
        check_domain(&node.domain, || format!("{label} uses"))?;
        for attribute in &node.attribute {
            self.attribute(attribute, &label, depth)?;
        }
        Ok(())
    }

    /// An attribute of a node (`owner`) or a function's default attribute.
    fn attribute(&mut self, bytes: &Bytes, owner: &str, depth: usize) -> Result<(), Error> {
        let attribute: Attribute = self.read(bytes)?;
        let place = |name: &str| format!("tensor \"{name}\" in attribute \"{}\" of {owner}", attribute.name);
        for tensor in attribute.t.iter().chain(&attribute.tensors) {
            self.tensor(tensor, place)?;
        }
        for sparse in attribute.sparse_tensor.iter().chain(&attribute.sparse_tensors) {
            self.sparse_tensor(sparse, place)?;
        }
        for graph in attribute.g.iter().chain(&attribute.graphs) {
            self.graph(graph, depth + 1)?;
        }
        Ok(())
    }

    fn function(&mut self, bytes: &Bytes) -> Result<(), Error> {
        let function: Function = self.read(bytes)?;
        self.summary.functions += 1;
        let label = format!("function \"{}\"", function.name);
        check_domain(&function.domain, || format!("{label} is defined in"))?;
        for opset in &function.opset_import {
            let opset = OperatorSetId::decode(opset.clone()).map_err(unreadable)?;
            check_domain(&opset.domain, || format!("{label} imports"))?;
        }
        for attribute in &function.attribute_proto {
            self.attribute(attribute, &label, 1)?;
        }
        for node in &function.node {
            self.node(node, 1)?;
        }
        Ok(())
    }

    fn sparse_tensor(&mut self, bytes: &Bytes, place: impl Fn(&str) -> String) -> Result<(), Error> {
        let sparse: SparseTensor = self.read(bytes)?;
        for tensor in sparse.values.iter().chain(&sparse.indices) {
            self.tensor(tensor, &place)?;
        }
        Ok(())
    }

    fn tensor(&mut self, bytes: &Bytes, place: impl Fn(&str) -> String) -> Result<(), Error> {
        let tensor = Tensor::decode(bytes.clone()).map_err(unreadable)?;
        self.summary.tensors += 1;
        // Any other value than DEFAULT is refused, not only EXTERNAL: none is valid.
        if tensor.data_location != 0 || !tensor.external_data.is_empty() {
            return Err(refused(format!("{} stores its data in an external file", place(&tensor.name)))
                .with_hint("Save the model with its weights inside (onnx.save_model(model, path, save_as_external_data=False))."));
        }
        Ok(())
    }
}

fn check_domain(domain: &str, user: impl FnOnce() -> String) -> Result<(), Error> {
    if ALLOWED_DOMAINS.contains(&domain) {
        return Ok(());
    }
    Err(refused(format!("{} operator domain \"{domain}\", which is not allowed", user())).with_hint(
        "Operators may come from the standard ONNX domains (\"\", ai.onnx, ai.onnx.ml) and com.microsoft.",
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::models::test_files;
    use crate::rng::Rng;

    /// ONNX messages with the fields tests set, declared apart from the checker's (whose
    /// walk they test) from the same onnx-ml.proto.
    mod pb {
        use prost::Message;

        #[derive(Clone, PartialEq, Message)]
        pub struct ModelProto {
            #[prost(int64, tag = "1")]
            pub ir_version: i64,
            #[prost(message, optional, tag = "7")]
            pub graph: Option<GraphProto>,
            #[prost(message, repeated, tag = "8")]
            pub opset_import: Vec<OperatorSetIdProto>,
            #[prost(message, repeated, tag = "20")]
            pub training_info: Vec<TrainingInfoProto>,
            #[prost(message, repeated, tag = "25")]
            pub functions: Vec<FunctionProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct OperatorSetIdProto {
            #[prost(string, tag = "1")]
            pub domain: String,
            #[prost(int64, tag = "2")]
            pub version: i64,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct GraphProto {
            #[prost(message, repeated, tag = "1")]
            pub node: Vec<NodeProto>,
            #[prost(string, tag = "2")]
            pub name: String,
            #[prost(message, repeated, tag = "5")]
            pub initializer: Vec<TensorProto>,
            #[prost(message, repeated, tag = "11")]
            pub input: Vec<ValueInfoProto>,
            #[prost(message, repeated, tag = "12")]
            pub output: Vec<ValueInfoProto>,
            #[prost(message, repeated, tag = "15")]
            pub sparse_initializer: Vec<SparseTensorProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct NodeProto {
            #[prost(string, repeated, tag = "1")]
            pub input: Vec<String>,
            #[prost(string, repeated, tag = "2")]
            pub output: Vec<String>,
            #[prost(string, tag = "3")]
            pub name: String,
            #[prost(string, tag = "4")]
            pub op_type: String,
            #[prost(message, repeated, tag = "5")]
            pub attribute: Vec<AttributeProto>,
            #[prost(string, tag = "7")]
            pub domain: String,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct AttributeProto {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(int64, tag = "3")]
            pub i: i64,
            #[prost(message, optional, tag = "5")]
            pub t: Option<TensorProto>,
            #[prost(message, optional, boxed, tag = "6")]
            pub g: Option<Box<GraphProto>>,
            #[prost(message, repeated, tag = "10")]
            pub tensors: Vec<TensorProto>,
            #[prost(message, repeated, tag = "11")]
            pub graphs: Vec<GraphProto>,
            /// AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4, GRAPH 5, SPARSE_TENSOR 11.
            #[prost(int32, tag = "20")]
            pub r#type: i32,
            #[prost(message, optional, tag = "22")]
            pub sparse_tensor: Option<SparseTensorProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct TensorProto {
            #[prost(int64, repeated, tag = "1")]
            pub dims: Vec<i64>,
            /// FLOAT 1, UINT8 2, INT64 7.
            #[prost(int32, tag = "2")]
            pub data_type: i32,
            #[prost(string, tag = "8")]
            pub name: String,
            #[prost(bytes = "vec", tag = "9")]
            pub raw_data: Vec<u8>,
            #[prost(message, repeated, tag = "13")]
            pub external_data: Vec<StringStringEntryProto>,
            #[prost(int32, tag = "14")]
            pub data_location: i32,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct StringStringEntryProto {
            #[prost(string, tag = "1")]
            pub key: String,
            #[prost(string, tag = "2")]
            pub value: String,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct SparseTensorProto {
            #[prost(message, optional, tag = "1")]
            pub values: Option<TensorProto>,
            #[prost(message, optional, tag = "2")]
            pub indices: Option<TensorProto>,
            #[prost(int64, repeated, tag = "3")]
            pub dims: Vec<i64>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct FunctionProto {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(string, repeated, tag = "4")]
            pub input: Vec<String>,
            #[prost(string, repeated, tag = "5")]
            pub output: Vec<String>,
            #[prost(message, repeated, tag = "7")]
            pub node: Vec<NodeProto>,
            #[prost(message, repeated, tag = "9")]
            pub opset_import: Vec<OperatorSetIdProto>,
            #[prost(string, tag = "10")]
            pub domain: String,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct TrainingInfoProto {
            #[prost(message, optional, tag = "1")]
            pub initialization: Option<GraphProto>,
            #[prost(message, optional, tag = "2")]
            pub algorithm: Option<GraphProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct ValueInfoProto {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(message, optional, tag = "2")]
            pub r#type: Option<TypeProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct TypeProto {
            #[prost(message, optional, tag = "1")]
            pub tensor_type: Option<TypeProtoTensor>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct TypeProtoTensor {
            #[prost(int32, tag = "1")]
            pub elem_type: i32,
            #[prost(message, optional, tag = "2")]
            pub shape: Option<TensorShapeProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct TensorShapeProto {
            #[prost(message, repeated, tag = "1")]
            pub dim: Vec<Dimension>,
        }

        #[derive(Clone, PartialEq, Message)]
        pub struct Dimension {
            #[prost(int64, tag = "1")]
            pub dim_value: i64,
        }
    }

    const FLOAT: i32 = 1;
    const UINT8: i32 = 2;

    fn float_tensor(name: &str, values: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            dims: vec![values.len() as i64],
            data_type: FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    /// A uint8 tensor of `len` bytes that ONNX reads from the file `location`.
    fn external_tensor(name: &str, location: &str, len: usize) -> pb::TensorProto {
        let entry = |key: &str, value: String| pb::StringStringEntryProto { key: key.into(), value };
        pb::TensorProto {
            dims: vec![len as i64],
            data_type: UINT8,
            name: name.into(),
            external_data: vec![entry("location", location.into()), entry("length", len.to_string())],
            data_location: 1,
            ..Default::default()
        }
    }

    fn value_info(name: &str, len: i64) -> pb::ValueInfoProto {
        let shape = pb::TensorShapeProto { dim: vec![pb::Dimension { dim_value: len }] };
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                tensor_type: Some(pb::TypeProtoTensor { elem_type: FLOAT, shape: Some(shape) }),
            }),
        }
    }

    fn node(name: &str, op_type: &str, input: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op_type.into(),
            ..Default::default()
        }
    }

    fn tensor_attribute(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
        pb::AttributeProto { name: name.into(), t: Some(t), r#type: 4, ..Default::default() }
    }

    fn graph_attribute(name: &str, g: pb::GraphProto) -> pb::AttributeProto {
        pb::AttributeProto { name: name.into(), g: Some(Box::new(g)), r#type: 5, ..Default::default() }
    }

    /// `y = x + w` over 4 floats, w an initializer: a model ONNX Runtime runs.
    fn add_graph(w: pb::TensorProto) -> pb::GraphProto {
        pb::GraphProto {
            node: vec![node("add", "Add", &["x", "w"], "y")],
            name: "g".into(),
            initializer: vec![w],
            input: vec![value_info("x", 4)],
            output: vec![value_info("y", 4)],
            ..Default::default()
        }
    }

    fn model(graph: pb::GraphProto) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 10,
            graph: Some(graph),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            ..Default::default()
        }
    }

    fn good_model() -> pb::ModelProto {
        model(add_graph(float_tensor("w", &[1.0, 2.0, 3.0, 4.0])))
    }

    fn check(model: &pb::ModelProto) -> Result<ModelSummary, Error> {
        check_model_bytes(&model.encode_to_vec())
    }

    fn refusal(model: &pb::ModelProto) -> String {
        let error = check(model).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidParameterValue, "{error}");
        assert!(error.hint.is_some());
        error.message
    }

    const EXTERNAL: &str = "stores its data in an external file";

    #[test]
    fn a_plain_model_passes() {
        let summary = check(&good_model()).unwrap();
        assert_eq!(summary, ModelSummary { graphs: 1, nodes: 1, tensors: 1, functions: 0 });
        // Empty bytes are an empty ModelProto: nothing to refuse (ONNX Runtime then does).
        assert_eq!(check_model_bytes(b"").unwrap(), ModelSummary::default());
    }

    #[test]
    fn external_initializer_is_refused() {
        let message = refusal(&model(add_graph(external_tensor("w", "PG_VERSION", 4))));
        assert_eq!(
            message,
            format!("the ONNX model is not allowed: initializer \"w\" of graph \"g\" {EXTERNAL}")
        );
        // Either marker alone is enough.
        let mut only_location = external_tensor("w", "PG_VERSION", 4);
        only_location.data_location = 0;
        assert!(refusal(&model(add_graph(only_location))).ends_with(EXTERNAL));
        let mut only_flag = external_tensor("w", "PG_VERSION", 4);
        only_flag.external_data.clear();
        assert!(refusal(&model(add_graph(only_flag))).ends_with(EXTERNAL));
    }

    #[test]
    fn external_constant_attribute_is_refused() {
        let mut graph = add_graph(float_tensor("w", &[0.0; 4]));
        let mut constant = node("c", "Constant", &[], "k");
        constant.attribute.push(tensor_attribute("value", external_tensor("k", "global/1260", 4)));
        graph.node.insert(0, constant);
        assert_eq!(
            refusal(&model(graph.clone())),
            format!("the ONNX model is not allowed: tensor \"k\" in attribute \"value\" of node \"c\" (Constant) {EXTERNAL}")
        );
        // The same attribute in a list of tensors.
        let attribute = &mut graph.node[0].attribute[0];
        attribute.tensors = vec![float_tensor("a", &[0.0]), attribute.t.take().unwrap()];
        assert!(refusal(&model(graph)).ends_with(EXTERNAL));
    }

    /// Raw repeated fields, to append to an encoded message (protobuf reads a message
    /// followed by more fields as one message).
    #[derive(Clone, PartialEq, Message)]
    struct RawField1 {
        #[prost(bytes = "vec", repeated, tag = "1")]
        field: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct RawField5 {
        #[prost(bytes = "vec", repeated, tag = "5")]
        field: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct RawField7 {
        #[prost(bytes = "vec", repeated, tag = "7")]
        field: Vec<Vec<u8>>,
    }

    /// A model whose main graph is `graph`'s bytes.
    fn model_with_graph_bytes(graph: Vec<u8>) -> Vec<u8> {
        let mut bytes = pb::ModelProto { graph: None, ..good_model() }.encode_to_vec();
        bytes.extend(RawField7 { field: vec![graph] }.encode_to_vec());
        bytes
    }

    /// Protobuf merges two occurrences of a message field into one: an external tensor
    /// followed by a harmless one is still external.
    #[test]
    fn an_external_occurrence_of_a_merged_field_is_refused() {
        let first = tensor_attribute("value", external_tensor("k", "PG_VERSION", 1));
        let second = tensor_attribute("value", pb::TensorProto { name: "k".into(), ..Default::default() });
        let mut attribute = first.encode_to_vec();
        attribute.extend(second.encode_to_vec());
        // As a decoder of the full schema reads it: one attribute, its tensor external.
        let merged = pb::AttributeProto::decode(&attribute[..]).unwrap();
        assert_eq!(merged.t.as_ref().unwrap().data_location, 1);
        assert_eq!(merged.t.as_ref().unwrap().external_data.len(), 2);

        let mut constant = node("c", "Constant", &[], "k").encode_to_vec();
        constant.extend(RawField5 { field: vec![attribute] }.encode_to_vec());
        let mut graph = add_graph(float_tensor("w", &[0.0; 4])).encode_to_vec();
        graph.extend(RawField1 { field: vec![constant] }.encode_to_vec());
        let bytes = model_with_graph_bytes(graph);
        let error = check_model_bytes(&bytes).unwrap_err();
        assert_eq!(
            error.message,
            format!("the ONNX model is not allowed: tensor \"k\" in attribute \"value\" of node \"c\" (Constant) {EXTERNAL}")
        );
    }

    #[test]
    fn external_subgraph_initializer_is_refused() {
        let branch = |name: &str, w: pb::TensorProto| pb::GraphProto {
            node: vec![node("id", "Identity", &["w"], "out")],
            name: name.into(),
            initializer: vec![w],
            output: vec![value_info("out", 4)],
            ..Default::default()
        };
        let mut graph = add_graph(float_tensor("w", &[0.0; 4]));
        let mut if_node = node("choose", "If", &["cond"], "z");
        if_node.attribute.push(graph_attribute("then_branch", branch("then", float_tensor("w", &[1.0; 4]))));
        if_node.attribute.push(graph_attribute("else_branch", branch("else", external_tensor("w", "base/1/1259", 4))));
        graph.node.push(if_node.clone());
        assert_eq!(
            refusal(&model(graph.clone())),
            format!("the ONNX model is not allowed: initializer \"w\" of graph \"else\" {EXTERNAL}")
        );
        // A Loop/Scan-style list of graphs, one level further down.
        let mut outer = add_graph(float_tensor("w", &[0.0; 4]));
        let mut loop_node = node("loop", "Loop", &[], "z");
        loop_node.attribute.push(pb::AttributeProto {
            name: "body".into(),
            graphs: vec![graph],
            r#type: 10,
            ..Default::default()
        });
        outer.node.push(loop_node);
        assert!(refusal(&model(outer)).ends_with(EXTERNAL));
    }

    #[test]
    fn external_tensor_in_a_function_is_refused() {
        let mut constant = node("c", "Constant", &[], "k");
        constant.attribute.push(tensor_attribute("value", external_tensor("k", "PG_VERSION", 1)));
        let function = pb::FunctionProto {
            name: "leak".into(),
            output: vec!["k".into()],
            node: vec![constant],
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            domain: "ai.onnx".into(),
            ..Default::default()
        };
        let mut with_function = good_model();
        with_function.functions.push(function);
        assert_eq!(
            refusal(&with_function),
            format!("the ONNX model is not allowed: tensor \"k\" in attribute \"value\" of node \"c\" (Constant) {EXTERNAL}")
        );
    }

    #[test]
    fn external_tensor_in_training_info_is_refused() {
        let mut training = good_model();
        training.training_info.push(pb::TrainingInfoProto {
            algorithm: Some(add_graph(external_tensor("w", "PG_VERSION", 4))),
            ..Default::default()
        });
        assert!(refusal(&training).ends_with(EXTERNAL));
    }

    #[test]
    fn external_sparse_initializer_is_refused() {
        let sparse = |values: pb::TensorProto| pb::SparseTensorProto {
            values: Some(values),
            indices: Some(pb::TensorProto { dims: vec![1], data_type: 7, name: "i".into(), raw_data: vec![0; 8], ..Default::default() }),
            dims: vec![4],
        };
        let mut graph = add_graph(float_tensor("w", &[0.0; 4]));
        graph.sparse_initializer.push(sparse(external_tensor("s", "PG_VERSION", 1)));
        assert_eq!(
            refusal(&model(graph)),
            format!("the ONNX model is not allowed: sparse initializer \"s\" of graph \"g\" {EXTERNAL}")
        );
        // In a sparse attribute.
        let mut graph = add_graph(float_tensor("w", &[0.0; 4]));
        let mut constant = node("c", "Constant", &[], "k");
        constant.attribute.push(pb::AttributeProto {
            name: "sparse_value".into(),
            sparse_tensor: Some(sparse(external_tensor("s", "PG_VERSION", 1))),
            r#type: 11,
            ..Default::default()
        });
        graph.node.push(constant);
        assert!(refusal(&model(graph)).ends_with(EXTERNAL));
    }

    #[test]
    fn operator_domains_outside_the_allow_list_are_refused() {
        for domain in ALLOWED_DOMAINS {
            let mut allowed = good_model();
            allowed.graph.as_mut().unwrap().node[0].domain = domain.into();
            allowed.opset_import.push(pb::OperatorSetIdProto { domain: domain.into(), version: 1 });
            check(&allowed).unwrap();
        }
        let mut custom_node = good_model();
        custom_node.graph.as_mut().unwrap().node[0].domain = "ai.onnx.contrib".into();
        assert_eq!(
            refusal(&custom_node),
            "the ONNX model is not allowed: node \"add\" (Add) uses operator domain \"ai.onnx.contrib\", which is not allowed"
        );
        let mut custom_import = good_model();
        custom_import.opset_import.push(pb::OperatorSetIdProto { domain: "my.ops".into(), version: 1 });
        assert_eq!(
            refusal(&custom_import),
            "the ONNX model is not allowed: the model imports operator domain \"my.ops\", which is not allowed"
        );
        let function = |domain: &str, import: &str| pb::FunctionProto {
            name: "f".into(),
            domain: domain.into(),
            opset_import: vec![pb::OperatorSetIdProto { domain: import.into(), version: 1 }],
            ..Default::default()
        };
        let mut custom_function = good_model();
        custom_function.functions.push(function("local.fns", ""));
        assert_eq!(
            refusal(&custom_function),
            "the ONNX model is not allowed: function \"f\" is defined in operator domain \"local.fns\", which is not allowed"
        );
        let mut function_import = good_model();
        function_import.functions.push(function("", "com.microsoft.nchwc"));
        assert!(refusal(&function_import).contains("function \"f\" imports operator domain \"com.microsoft.nchwc\""));
        // Domains compare exactly.
        let mut near_miss = good_model();
        near_miss.graph.as_mut().unwrap().node[0].domain = "com.microsoft ".into();
        refusal(&near_miss);
    }

    /// Each If's then_branch holds the next; `levels` graphs in all.
    fn nested(levels: usize) -> pb::ModelProto {
        let mut graph = add_graph(float_tensor("w", &[0.0; 4]));
        for _ in 1..levels {
            let mut outer = add_graph(float_tensor("w", &[0.0; 4]));
            let mut if_node = node("if", "If", &["c"], "z");
            if_node.attribute.push(graph_attribute("then_branch", graph));
            outer.node.push(if_node);
            graph = outer;
        }
        model(graph)
    }

    #[test]
    fn nesting_is_bounded() {
        assert_eq!(check(&nested(LIMITS.max_depth)).unwrap().graphs, LIMITS.max_depth);
        let message = "the ONNX model is not allowed: its subgraphs are nested more than 16 deep";
        assert_eq!(check(&nested(LIMITS.max_depth + 1)).unwrap_err().message, message);
        // A bomb far deeper than prost's own recursion limit (100 messages).
        assert_eq!(check(&nested(1_000)).unwrap_err().message, message);
    }

    #[test]
    fn sizes_are_bounded() {
        let bytes = good_model().encode_to_vec();
        let limits = |max_bytes, max_items| Limits { max_bytes, max_items, max_depth: 16 };
        check_model_bytes_within(&bytes, &limits(bytes.len(), 100)).unwrap();
        let error = check_model_bytes_within(&bytes, &limits(bytes.len() - 1, 100)).unwrap_err();
        assert_eq!(error.kind, ErrorKind::ProgramLimitExceeded);
        assert_eq!(error.message, format!("the ONNX model is too large: {} bytes, more than {}", bytes.len(), bytes.len() - 1));

        // Items: the graph, opset import, node, its initializer: 4 (the attribute-less node
        // has no children).
        check_model_bytes_within(&bytes, &limits(bytes.len(), 4)).unwrap();
        let error = check_model_bytes_within(&bytes, &limits(bytes.len(), 3)).unwrap_err();
        assert_eq!(error.kind, ErrorKind::ProgramLimitExceeded);
        assert_eq!(error.message, "the ONNX model is too large: more than 3 nodes, attributes, tensors and graphs");

        // Empty nodes cost 2 bytes each: 1 MB of them is refused when counted, before
        // anything is held for them.
        let empty_nodes = RawField1 { field: vec![Vec::new(); LIMITS.max_items] }.encode_to_vec();
        assert_eq!(empty_nodes.len(), 2 * LIMITS.max_items);
        let error = check_model_bytes(&model_with_graph_bytes(empty_nodes)).unwrap_err();
        assert_eq!(error.message, "the ONNX model is too large: more than 1000000 nodes, attributes, tensors and graphs");
    }

    #[test]
    fn ort_format_is_refused() {
        let mut bytes = vec![0x10, 0, 0, 0];
        bytes.extend(b"ORTM");
        bytes.extend([0; 32]);
        assert_eq!(
            check_model_bytes(&bytes).unwrap_err().message,
            "the ONNX model is not allowed: it is in ORT format; only ONNX (protobuf) models are accepted"
        );
    }

    #[test]
    fn unreadable_bytes_are_a_load_error() {
        for bytes in [&b"not an onnx model"[..], &test_files::minilm("model.onnx")[..4096]] {
            let error = check_model_bytes(bytes).unwrap_err();
            assert_eq!(error.kind, ErrorKind::DataException);
            assert_eq!(error.message, "could not load the ONNX model");
            assert!(error.detail.is_some());
        }
    }

    /// The counts the Python onnx package finds in a model file, as the checker counts
    /// them: graphs and nodes everywhere, initializers and attribute tensors.
    fn python_counts(path: &Path) -> ModelSummary {
        let script = r#"
import sys, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
c = {"graphs": 0, "nodes": 0, "tensors": 0}
def graph(g):
    c["graphs"] += 1
    c["tensors"] += len(g.initializer) + 2 * len(g.sparse_initializer)
    nodes(g.node)
def nodes(ns):
    for n in ns:
        c["nodes"] += 1
        for a in n.attribute:
            c["tensors"] += (1 if a.HasField("t") else 0) + len(a.tensors)
            c["tensors"] += 2 * ((1 if a.HasField("sparse_tensor") else 0) + len(a.sparse_tensors))
            for s in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                graph(s)
graph(m.graph)
for f in m.functions:
    nodes(f.node)
print(c["graphs"], c["nodes"], c["tensors"], len(m.functions))
"#;
        let output = Command::new(test_files::python()).arg("-c").arg(script).arg(path).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let counts: Vec<usize> =
            String::from_utf8(output.stdout).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
        ModelSummary { graphs: counts[0], nodes: counts[1], tensors: counts[2], functions: counts[3] }
    }

    #[test]
    fn the_installed_models_pass() {
        let mut files = vec![test_files::minilm_path("model.onnx")];
        for generator in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
            files.push(test_files::generator_path(generator, "model.onnx"));
        }
        for file in files {
            let summary = check_model_bytes(&std::fs::read(&file).unwrap()).unwrap();
            assert_eq!(summary, python_counts(&file), "{}", file.display());
            assert!(summary.nodes > 300, "{summary:?}");
        }
    }

    /// The crafted file is what the attack needs: Python's onnx sees an external-data
    /// initializer, and ONNX Runtime, given the bytes alone, reads the file relative to
    /// its working directory (a backend's is the data directory).
    #[test]
    fn python_onnx_and_onnx_runtime_resolve_the_crafted_external_data() {
        let dir = std::env::temp_dir().join(format!("ragtune-onnx-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), [7u8, 200, 0, 42]).unwrap();
        // y = x + float(w), w the file's 4 bytes. (Float weights go through an optimizer
        // that wants the model's path, so ONNX Runtime refuses them; uint8 ones do not.)
        let mut graph = add_graph(external_tensor("w", "secret", 4));
        let mut cast = node("cast", "Cast", &["w"], "wf");
        cast.attribute.push(pb::AttributeProto { name: "to".into(), i: FLOAT.into(), r#type: 2, ..Default::default() });
        graph.node = vec![cast, node("add", "Add", &["x", "wf"], "y")];
        let crafted = model(graph).encode_to_vec();
        std::fs::write(dir.join("model.onnx"), &crafted).unwrap();
        let script = r#"
import os, numpy as np, onnx, onnxruntime
from onnx import external_data_helper
m = onnx.load("model.onnx", load_external_data=False)
(w,) = m.graph.initializer
assert external_data_helper.uses_external_data(w)
assert external_data_helper.ExternalDataInfo(w).location == "secret"
external_data_helper.load_external_data_for_model(m, os.getcwd())
print(*onnx.numpy_helper.to_array(w))
s = onnxruntime.InferenceSession(open("model.onnx", "rb").read(), providers=["CPUExecutionProvider"])
print(*s.run(None, {"x": np.zeros(4, np.float32)})[0])
"#;
        let output = Command::new(test_files::python()).arg("-c").arg(script).current_dir(&dir).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8(output.stdout).unwrap(), "7 200 0 42\n7.0 200.0 0.0 42.0\n");
        let error = check_model_bytes(&crafted).unwrap_err();
        assert_eq!(error.message, format!("the ONNX model is not allowed: initializer \"w\" of graph \"g\" {EXTERNAL}"));
        // And no session is made from it.
        let error = test_files::runtime().session(&crafted, 1).unwrap_err();
        assert_eq!(error.message, format!("the ONNX model is not allowed: initializer \"w\" of graph \"g\" {EXTERNAL}"));
    }

    /// The checker answers Ok or Err, never panics, on random and mutated models: bit flips,
    /// byte changes, truncations, and splices of the real MiniLM bytes.
    #[test]
    fn fuzz_never_panics() {
        let minilm = test_files::minilm("model.onnx");
        // MiniLM's structure without its weights: every node, small initializers.
        let mut real = pb::ModelProto::decode(&minilm[..]).unwrap();
        for tensor in &mut real.graph.as_mut().unwrap().initializer {
            tensor.raw_data.truncate(8);
        }
        let mut seeds = vec![real.encode_to_vec(), good_model().encode_to_vec(), nested(4).encode_to_vec()];
        let mut sparse = add_graph(float_tensor("w", &[0.0; 4]));
        sparse.sparse_initializer.push(pb::SparseTensorProto {
            values: Some(float_tensor("s", &[1.0])),
            indices: Some(float_tensor("i", &[0.0])),
            dims: vec![4],
        });
        seeds.push(model(sparse).encode_to_vec());
        let mut rng = Rng::new(17);
        let mut pick = |n: usize| rng.below(n as u64) as usize;
        let mut outcomes = [0usize; 2];
        for round in 0..100_000 {
            let mut bytes = seeds[pick(seeds.len())].clone();
            // The big seed is mutated less often, to keep the test within seconds.
            if bytes.len() > 10_000 && round % 8 != 0 {
                bytes = seeds[1 + pick(seeds.len() - 1)].clone();
            }
            for _ in 0..1 + pick(4) {
                match pick(6) {
                    0 if !bytes.is_empty() => {
                        let at = pick(bytes.len());
                        bytes[at] ^= 1 << pick(8);
                    }
                    1 if !bytes.is_empty() => {
                        let at = pick(bytes.len());
                        bytes[at] = pick(256) as u8;
                    }
                    2 => bytes.truncate(pick(bytes.len() + 1)),
                    3 => {
                        let start = pick(minilm.len());
                        let end = (start + pick(64)).min(minilm.len());
                        let at = pick(bytes.len() + 1);
                        bytes.splice(at..at, minilm[start..end].iter().copied());
                    }
                    4 => bytes = (0..pick(256)).map(|_| pick(256) as u8).collect(),
                    _ => {
                        let at = pick(bytes.len() + 1);
                        let piece: Vec<u8> = bytes[at..].iter().take(pick(32)).copied().collect();
                        bytes.splice(at..at, piece);
                    }
                }
            }
            outcomes[check_model_bytes(&bytes).is_ok() as usize] += 1;
        }
        // Both answers came up, so the mutations reach past the first bytes.
        assert!(outcomes[0] > 1000 && outcomes[1] > 1000, "{outcomes:?}");
    }
}
