"""From an uploaded picture to what a model sees: the MNIST-style 28x28 digit.

- `decode.py`: image bytes decoded safely (format allow-list, pixel limits read from the header
  before decoding, one frame) and the `ImageError` family every refusal raises;
- `pixelcsv.py`: a digit sent as 28x28 pixel values in CSV, the format the project grew from;
- `ink.py`: the ink in a grayscale picture (background, polarity, noise floor, specks);
- `mnist.py`: fitting that ink into MNIST's 20x20 box centred by mass in a 28x28 field.

Pure functions on bytes and arrays: imports nothing of digitserve outside this folder (no
config, no registry, no torch), so the server, training and the tests all share one copy.
"""
