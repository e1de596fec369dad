"""torch and TensorFlow in one script: train in one framework, evaluate in the other.

The caller makes a dataset with numpy; a small network is trained with torch (Python 3.11,
numpy 2); its weights come back as numpy arrays and go to TensorFlow (Python 3.12, numpy 1),
which rebuilds the same network with Keras and evaluates it. Neither framework is installed where
this script runs (see environments/ml.yaml).

Run it from the repository's root:  python examples/mixed_frameworks.py
The first run builds both environments (TensorFlow is a large download).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import envrunner

MANIFEST = Path(__file__).resolve().parent.parent / "environments" / "ml.yaml"


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half-moons in 2-D, labelled 0 and 1: not separable by a straight line."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(angle), 1 - np.cos(angle))
    y = np.where(label == 0, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + rng.normal(scale=0.1, size=(n, 2))
    return points.astype(np.float32), label.astype(np.float32)


@envrunner.task(env="torch")
def train(points, labels, epochs: int = 300):  # type: ignore[no-untyped-def]
    """Train a 2-16-1 network with torch; return its weights as numpy arrays."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Sigmoid()
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.from_numpy(points)
    y = torch.from_numpy(labels).unsqueeze(1)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    # Tensors cannot be loaded where torch is not installed: return plain numpy arrays.
    weights = [p.detach().numpy() for p in model.parameters()]
    return {"torch": torch.__version__, "loss": loss.item(), "weights": weights}


@envrunner.task(env="tf")
def evaluate(weights, points, labels):  # type: ignore[no-untyped-def]
    """Rebuild the network with Keras, load torch's weights, and measure its accuracy."""
    import numpy
    import tensorflow as tf

    w1, b1, w2, b2 = weights
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(2,)),
            tf.keras.layers.Dense(16, activation="tanh"),
            tf.keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.set_weights([w1.T, b1, w2.T, b2])  # torch stores (out, in); Keras wants (in, out)
    predictions = model(points, training=False).numpy()[:, 0] > 0.5
    accuracy = float((predictions == labels.astype(bool)).mean())
    return {"tensorflow": tf.__version__, "numpy": numpy.__version__, "accuracy": accuracy}


def main() -> int:
    train_points, train_labels = make_data(2000, seed=0)
    test_points, test_labels = make_data(500, seed=1)
    with envrunner.Runner(MANIFEST):
        trained = train(train_points, train_labels)
        print(f"torch {trained['torch']}: trained on 2000 points, final loss {trained['loss']:.3f}")
        shapes = [tuple(w.shape) for w in trained["weights"]]
        print(f"        weights came back as numpy arrays of shapes {shapes}")
        result = evaluate(trained["weights"], test_points, test_labels)
        print(
            f"tensorflow {result['tensorflow']} (numpy {result['numpy']}): "
            f"accuracy {result['accuracy']:.1%} on 500 new points"
        )
    python = sys.version.split()[0]
    print(f"caller: Python {python}, numpy {np.__version__}, no torch, no TensorFlow")
    return 0 if result["accuracy"] > 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
