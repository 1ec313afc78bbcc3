"""`digits`, in Python: classifies an 8x8 grey-scale image of a handwritten digit (the
scikit-learn "digits" layout: 64 values in 0..=16, row-major) with the model the operator
grants as `digits` (input `pixels` f32 [1, 64] raw values, output `scores` f32 [1, 10]
probabilities). Same route and JSON as the Rust plugin in plugins/digits.
"""

from dataclasses import dataclass
from typing import Annotated

from infergate import Ctx, HttpError, Plugin, Schema, nn

#: Pixels per image (8x8).
PIXELS = 64
#: The largest pixel value.
MAX_PIXEL = 16

plugin = Plugin(
    "digits",
    version="0.1.0",
    description="Classifies 8x8 images of handwritten digits",
    models=["digits"],
)


@dataclass
class ClassifyRequest:
    pixels: Annotated[
        list[float],
        Schema(
            description="64 pixel intensities in 0..=16, row-major 8x8.",
            length=PIXELS,
            items=Schema(minimum=0, maximum=MAX_PIXEL),
        ),
    ]


@dataclass
class Classification:
    digit: Annotated[int, Schema(description="The most likely digit.", minimum=0, maximum=9)]
    scores: Annotated[list[float], "Probability of each digit 0..=9."]


@plugin.post("/classify", summary="Classify an 8x8 image of a handwritten digit")
def classify(ctx: Ctx, req: ClassifyRequest) -> Classification:
    # The host has checked the body against the schema; these guard local use.
    if len(req.pixels) != PIXELS:
        raise HttpError.invalid_request(
            f"pixels must have exactly {PIXELS} values, got {len(req.pixels)}"
        )
    for i, value in enumerate(req.pixels):
        if not 0.0 <= value <= MAX_PIXEL:
            raise HttpError.invalid_request(f"pixels[{i}] = {value} is outside 0..=16")

    with nn.Model.load("digits") as model:
        outputs = model.run({"pixels": nn.Tensor.f32([1, PIXELS], req.pixels)})
    scores = outputs["scores"].to_f32()
    if len(scores) != 10:
        raise HttpError.backend(f"expected 10 scores, got {len(scores)}")
    digit = max(range(len(scores)), key=scores.__getitem__)
    return Classification(digit=digit, scores=scores)


IncomingHandler, Manifest = plugin.exports()
