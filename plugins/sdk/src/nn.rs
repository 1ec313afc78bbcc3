//! Typed helpers over `wasi:nn`: load a model the operator granted by name, run it on named
//! tensors, read typed outputs. Tensor data is little-endian bytes, as wasi-nn specifies.
//!
//! ```ignore
//! let model = nn::Model::load("digits")?;
//! let outputs = model.run(&[("pixels", nn::Tensor::f32(&[1, 64], &pixels))])?;
//! let scores = outputs.get("scores")?.to_f32()?;
//! ```

use crate::bindings::wasi::nn::errors::ErrorCode;
use crate::bindings::wasi::nn::graph::{self, Graph};
use crate::bindings::wasi::nn::tensor::{Tensor as WitTensor, TensorType};
use crate::{Error, Result};

/// A model opened with `load-by-name`.
pub struct Model {
    name: String,
    graph: Graph,
}

impl Model {
    /// Opens the model the operator declared as `name`. A model that does not exist or that
    /// this plugin was not granted gives [`Error::model_not_found`].
    pub fn load(name: &str) -> Result<Model> {
        match graph::load_by_name(name) {
            Ok(graph) => Ok(Model {
                name: name.to_string(),
                graph,
            }),
            Err(err) if err.code() == ErrorCode::NotFound => Err(Error::model_not_found(name)),
            Err(err) => Err(err.into()),
        }
    }

    /// The name the model was loaded by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the model once on named inputs (a fresh execution context each call).
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let context = self.graph.init_execution_context()?;
        let inputs = inputs
            .iter()
            .map(|(name, tensor)| {
                (
                    name.to_string(),
                    WitTensor::new(&tensor.dims, tensor.ty, &tensor.data),
                )
            })
            .collect::<Vec<_>>();
        let outputs = context.compute(inputs)?;
        Ok(Outputs { tensors: outputs })
    }
}

/// An input tensor: dimensions, element type and little-endian data.
#[derive(Debug, Clone)]
pub struct Tensor {
    dims: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

macro_rules! constructor {
    ($name:ident, $elem:ty, $ty:expr, $doc:literal) => {
        #[doc = $doc]
        pub fn $name(dims: &[u32], data: &[$elem]) -> Tensor {
            let bytes = data.iter().flat_map(|value| value.to_le_bytes()).collect();
            Tensor {
                dims: dims.to_vec(),
                ty: $ty,
                data: bytes,
            }
        }
    };
}

impl Tensor {
    constructor!(
        f32,
        f32,
        TensorType::Fp32,
        "An `f32` tensor of shape `dims`."
    );
    constructor!(
        f64,
        f64,
        TensorType::Fp64,
        "An `f64` tensor of shape `dims`."
    );
    constructor!(
        i32,
        i32,
        TensorType::I32,
        "An `i32` tensor of shape `dims`."
    );
    constructor!(
        i64,
        i64,
        TensorType::I64,
        "An `i64` tensor of shape `dims`."
    );

    /// A `u8` tensor of shape `dims`.
    pub fn u8(dims: &[u32], data: &[u8]) -> Tensor {
        Tensor {
            dims: dims.to_vec(),
            ty: TensorType::U8,
            data: data.to_vec(),
        }
    }

    /// The tensor's shape.
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }
}

/// The named output tensors of one [`Model::run`].
pub struct Outputs {
    tensors: Vec<(String, WitTensor)>,
}

impl Outputs {
    /// The output called `name`; a missing output is a backend error.
    pub fn get(&self, name: &str) -> Result<Output> {
        let (_, tensor) = self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::backend(format!("the model has no output '{name}'")))?;
        Ok(Output {
            dims: tensor.dimensions(),
            ty: tensor.ty(),
            data: tensor.data(),
        })
    }

    /// The names of all outputs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(name, _)| name.as_str())
    }
}

/// One output tensor, copied out of the host.
#[derive(Debug, Clone)]
pub struct Output {
    dims: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

macro_rules! reader {
    ($name:ident, $elem:ty, $ty:pat, $label:literal) => {
        #[doc = concat!("The data as `", $label, "`; any other element type is a backend error.")]
        pub fn $name(&self) -> Result<Vec<$elem>> {
            if !matches!(self.ty, $ty) {
                return Err(Error::backend(format!(
                    "expected a {} output tensor, got {:?}",
                    $label, self.ty
                )));
            }
            const SIZE: usize = std::mem::size_of::<$elem>();
            if self.data.len() % SIZE != 0 {
                return Err(Error::backend(format!(
                    "output tensor has {} bytes, not a multiple of {}",
                    self.data.len(),
                    SIZE
                )));
            }
            Ok(self
                .data
                .chunks_exact(SIZE)
                .map(|b| {
                    let mut raw = [0u8; SIZE];
                    raw.copy_from_slice(b);
                    <$elem>::from_le_bytes(raw)
                })
                .collect())
        }
    };
}

impl Output {
    reader!(to_f32, f32, TensorType::Fp32, "f32");
    reader!(to_f64, f64, TensorType::Fp64, "f64");
    reader!(to_i32, i32, TensorType::I32, "i32");
    reader!(to_i64, i64, TensorType::I64, "i64");

    /// The tensor's shape.
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}
