#!/usr/bin/env python3
"""Fits the polynomial behind the CPU kernels' erfc (model/src/cpu/math.rs).

erfc(z) = t * exp(-z^2 + P(t - C)),  t = 1 / (1 + z/2),  z in [0, ZMAX]

P is in t - C (C the middle of t's range) so its coefficients stay small and Horner's
rounding in f32 stays near one ulp.

P is fitted by least squares on Chebyshev nodes in t (close to minimax), in f64,
against scipy's erfc; the relative error of the f64 evaluation is printed, and the
coefficients (highest degree first, for Horner) as Rust literals.
Run: .baseline/venv/bin/python scripts/fit-erfc.py  (numpy + scipy)
"""
import sys

import numpy as np
from scipy.special import erfc

ZMAX = 9.2  # erfc(9.2) ~ 1e-38: below it, f32 underflows anyway
DEGREE = int(sys.argv[1]) if len(sys.argv) > 1 else 9

t_lo, t_hi = 1.0 / (1.0 + ZMAX / 2.0), 1.0
k = np.arange(4000)
nodes = np.cos(np.pi * (k + 0.5) / len(k))
t = 0.5 * (t_hi + t_lo) + 0.5 * (t_hi - t_lo) * nodes
z = 2.0 / t - 2.0
target = np.log(erfc(z) / t) + z * z
C = 0.5 * (t_hi + t_lo)
coef = np.polyfit(t - C, target, DEGREE)

zz = np.linspace(0.0, ZMAX, 200001)
tt = 1.0 / (1.0 + zz / 2.0)
approx = tt * np.exp(-zz * zz + np.polyval(coef, tt - C))
rel = np.abs(approx / erfc(zz) - 1.0)
print(f"degree {DEGREE}: max relative error {rel.max():.3e} (f64 evaluation)")
# The same polynomial by Horner in f32, against f64: what rounding adds.
s32 = (tt - C).astype(np.float32)
p32 = np.float32(coef[0])
for c in coef[1:]:
    p32 = p32 * s32 + np.float32(c)
print(f"P in f32 Horner: max abs error {np.abs(p32 - np.polyval(coef, tt - C)).max():.3e}")
print(f"C = {C!r}")
for c in coef:
    print(f"    {c:.9e},")
