# Fit erf(x) ~ x * P(x^2) / Q(x^2) on [0, XMAX] (minimax via IRLS/Lawson), check in float32 evaluation.
import numpy as np, math, sys
from math import erf
np.set_printoptions(precision=17)
XMAX = 4.0
dp, dq = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (6, 4)
x = np.cos(np.linspace(0, np.pi, 20001)) * XMAX / 2 + XMAX / 2
x = np.sort(np.abs(x))
f = np.array([erf(v) for v in x])
t = x * x
w = np.ones_like(x)
Qprev = np.ones_like(x)
for it in range(60):
    # unknowns: p0..p_dp, q1..q_dq (q0 = 1); residual x P(t) - f Q(t)
    A = np.concatenate([x[:, None] * t[:, None] ** np.arange(dp + 1), -f[:, None] * t[:, None] ** np.arange(1, dq + 1)], 1)
    b = f
    W = w / Qprev
    sol, *_ = np.linalg.lstsq(A * W[:, None], b * W, rcond=None)
    p, q = sol[:dp + 1], np.concatenate([[1.0], sol[dp + 1:]])
    Q = np.polyval(q[::-1], t); P = np.polyval(p[::-1], t)
    err = x * P / Q - f
    Qprev = Q
    w = w * (np.abs(err) / np.abs(err).max()) ** 0.5 + 1e-12 if it > 5 else w
    w = w / w.max()
print("float64 max err", np.abs(err).max())
# float32 Horner evaluation with fma emulated in float64 then rounded
def ev32(xs):
    xs = xs.astype(np.float32)
    xc = np.minimum(np.abs(xs), np.float32(XMAX))
    t = (xc * xc).astype(np.float32)
    pp = np.float32(p[-1])
    for c in p[-2::-1]:
        pp = (pp.astype(np.float64) * t + np.float32(c)).astype(np.float32)
    qq = np.float32(q[-1])
    for c in q[-2::-1]:
        qq = (qq.astype(np.float64) * t + np.float32(c)).astype(np.float32)
    r = (xc * pp).astype(np.float32) / qq
    return np.sign(xs) * np.minimum(r, np.float32(1.0))
xs = np.linspace(-6, 6, 2000001)
ref = np.array([erf(float(v)) for v in xs.astype(np.float32)])
e = ev32(xs) - ref
print("float32 max abs err", np.abs(e).max(), "at", xs[np.abs(e).argmax()])
g = xs.astype(np.float32).astype(np.float64)
gelu_ref = 0.5 * g * (1 + ref)
gelu = (0.5 * g * (1 + ev32(xs))).astype(np.float32)
print("gelu max abs err", np.abs(gelu - gelu_ref).max(), "max rel (|x|>1e-3)", (np.abs(gelu - gelu_ref) / np.maximum(np.abs(gelu_ref), 1e-30))[np.abs(g) > 1e-3].max())
print("P", [float(np.float32(c)) for c in p]); print("Q", [float(np.float32(c)) for c in q])
print("Prepr", [repr(float(c)) for c in p]); print("Qrepr", [repr(float(c)) for c in q])
