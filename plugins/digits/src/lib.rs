//! `digits`: classifies an 8x8 grey-scale image of a handwritten digit (the scikit-learn
//! "digits" layout: 64 values in 0..=16, row-major) with the model the operator grants as
//! `digits` (input `pixels` f32 [1, 64] raw values, output `scores` f32 [1, 10] probabilities).

use infergate_sdk::prelude::*;

/// Pixels per image (8x8).
const PIXELS: usize = 64;
/// The largest pixel value.
const MAX_PIXEL: f32 = 16.0;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    /// 64 pixel intensities in 0..=16, row-major 8x8.
    #[schemars(length(equal = 64), inner(range(min = 0, max = 16)))]
    pixels: Vec<f32>,
}

#[derive(Serialize, JsonSchema)]
struct Classification {
    /// The most likely digit.
    digit: u8,
    /// Probability of each digit 0..=9.
    scores: Vec<f32>,
}

fn classify(_ctx: &Ctx, req: ClassifyRequest) -> Result<Classification> {
    if req.pixels.len() != PIXELS {
        return Err(Error::invalid_request(format!(
            "pixels must have exactly {PIXELS} values, got {}",
            req.pixels.len()
        )));
    }
    if let Some((i, value)) = req
        .pixels
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=MAX_PIXEL).contains(*v))
    {
        return Err(Error::invalid_request(format!(
            "pixels[{i}] = {value} is outside 0..=16"
        )));
    }

    let model = nn::Model::load("digits")?;
    let outputs = model.run(&[("pixels", nn::Tensor::f32(&[1, PIXELS as u32], &req.pixels))])?;
    let scores = outputs.get("scores")?.to_f32()?;
    if scores.len() != 10 {
        return Err(Error::backend(format!(
            "expected 10 scores, got {}",
            scores.len()
        )));
    }
    let digit = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u8)
        .unwrap_or(0);
    Ok(Classification { digit, scores })
}

plugin! {
    name: "digits",
    version: env!("CARGO_PKG_VERSION"),
    description: "Classifies 8x8 images of handwritten digits",
    models: ["digits"],
    routes: [
        post("/classify", classify).summary("Classify an 8x8 image of a handwritten digit"),
    ],
}
