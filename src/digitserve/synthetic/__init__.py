"""Image sets the project makes itself, deterministically from a seed: things that are not digits
(`negatives`) and MNIST digits as other people's pens, scanners and cameras would give them
(`robustness`). Both go through the server's own preprocessing, so a model is trained and
measured on what it will see when it serves. May import config, data and imaging."""
