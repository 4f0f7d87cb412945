"""Fits csrc/cpu/erf.h's rational erf: erf(x) ~ x P(x^2) / Q(x^2) on [0, 4], Q(0) = 1.

    python tools/fit_erf.py [P degree] [Q degree]      # default 6 4, the degrees erf.h uses

Near-minimax by iteratively reweighted least squares on the linearised residual x P - erf Q (float64), then a
check of the fit as erf.h evaluates it: float32 coefficients, float32 Horner steps, |x| clamped to 4.
Prints the errors and the coefficients, lowest degree first.
"""

import math
import sys

import numpy as np

XMAX = 4.0


def fit(dp: int, dq: int) -> tuple[np.ndarray, np.ndarray, float]:
    x = np.sort(np.abs(np.cos(np.linspace(0, np.pi, 20001)) * XMAX / 2 + XMAX / 2))  # Chebyshev-like nodes
    f = np.array([math.erf(v) for v in x])
    t = x * x
    w = np.ones_like(x)
    q_prev = np.ones_like(x)
    for it in range(60):
        a = np.concatenate(
            [x[:, None] * t[:, None] ** np.arange(dp + 1), -f[:, None] * t[:, None] ** np.arange(1, dq + 1)], 1
        )
        scale = w / q_prev
        sol, *_ = np.linalg.lstsq(a * scale[:, None], f * scale, rcond=None)
        p, q = sol[: dp + 1], np.concatenate([[1.0], sol[dp + 1 :]])
        q_prev = np.polyval(q[::-1], t)
        err = x * np.polyval(p[::-1], t) / q_prev - f
        if it > 5:  # Lawson-style: weight up where the error is largest
            w = w * np.sqrt(np.abs(err) / np.abs(err).max()) + 1e-12
            w = w / w.max()
    return p, q, np.abs(err).max()


def erf_float32(xs: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    xs = xs.astype(np.float32)
    xc = np.minimum(np.abs(xs), np.float32(XMAX))
    t = (xc * xc).astype(np.float32)

    def horner(coef: np.ndarray) -> np.ndarray:
        acc = np.float32(coef[-1])
        for c in coef[-2::-1]:
            acc = (acc.astype(np.float64) * t + np.float32(c)).astype(np.float32)  # one rounding, as an FMA
        return acc

    r = (xc * horner(p)).astype(np.float32) / horner(q)
    return np.sign(xs) * np.minimum(r, np.float32(1.0))


def main() -> None:
    dp, dq = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (6, 4)
    p, q, err64 = fit(dp, dq)
    xs = np.linspace(-6, 6, 2000001)
    exact = np.array([math.erf(float(v)) for v in xs.astype(np.float32)])
    err32 = np.abs(erf_float32(xs, p, q) - exact)
    print(
        f"P degree {dp}, Q degree {dq}: max abs error {err64:.2e} (float64), {err32.max():.2e} (float32, "
        f"at x = {xs[err32.argmax()]:.4f})"
    )
    print("P:", ", ".join(f"{np.float32(c):.7e}" for c in p))
    print("Q:", ", ".join(f"{np.float32(c):.7e}" for c in q))


if __name__ == "__main__":
    main()
