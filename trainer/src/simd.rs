//! The trainer's element-wise hot loops (optimiser updates, softmax rows), compiled twice: for the baseline
//! x86-64 target and with AVX2+FMA, picked at run time. The bodies are plain loops the compiler vectorises;
//! `exp` is a polynomial (Cephes `expf`, relative error ≈ 1e-7) because libm's scalar `expf` call would
//! stop vectorisation. Both versions compute the same IEEE operations in the same order (Rust never
//! contracts `a * b + c` into an FMA on its own), so the result does not depend on the CPU.

/// `exp(x)` for f32, branch-free so loops over it vectorise. Relative error below 3e-7 in [−87.3, 88.3]; clamped outside.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

dispatch! {
    /// Adagrad: `acc += g²; w −= lr · g / sqrt(acc + eps)`.
    pub fn adagrad(w: &mut [f32], g: &[f32], acc: &mut [f32], lr: f32) {
        let n = w.len().min(g.len()).min(acc.len());
        let (w, g, acc) = (&mut w[..n], &g[..n], &mut acc[..n]);
        for i in 0..n {
            acc[i] += g[i] * g[i];
            w[i] -= lr * g[i] / (acc[i] + 1e-6).sqrt();
        }
    }
}

dispatch! {
    /// Adagrad with momentum: `acc += g²; v = μ·v − lr · g / sqrt(acc + eps); w += v`.
    pub fn adagrad_momentum(w: &mut [f32], g: &[f32], acc: &mut [f32], v: &mut [f32], lr: f32, mu: f32) {
        let n = w.len().min(g.len()).min(acc.len()).min(v.len());
        let (w, g, acc, v) = (&mut w[..n], &g[..n], &mut acc[..n], &mut v[..n]);
        for i in 0..n {
            acc[i] += g[i] * g[i];
            v[i] = mu * v[i] - lr * g[i] / (acc[i] + 1e-6).sqrt();
            w[i] += v[i];
        }
    }
}

dispatch! {
    /// Adam with bias-correction factors `c1 = 1 − β1^t`, `c2 = 1 − β2^t`.
    pub fn adam(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, c1: f32, c2: f32) {
        let (b1, b2) = (0.9f32, 0.999f32);
        let n = w.len().min(g.len()).min(m.len()).min(v.len());
        let (w, g, m, v) = (&mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
        }
    }
}

dispatch! {
    /// Adds `offsets` to `row` and replaces it with `exp(row − max)`; returns `(max, Σ exp(row − max))`.
    /// A softmax split over column blocks combines the blocks' pairs (see `xe_op`).
    pub fn exp_shift_in_place(row: &mut [f32], offsets: &[f32]) -> (f32, f32) {
        // Reductions run in LANES independent accumulators: a single running max/sum is a serial
        // dependency chain the compiler may not reorder (no fast-math), which would keep the loop scalar.
        const LANES: usize = 16;
        let n = row.len().min(offsets.len());
        let row = &mut row[..n];
        let mut maxes = [f32::NEG_INFINITY; LANES];
        for (chunk, offs) in row.chunks_mut(LANES).zip(offsets[..n].chunks(LANES)) {
            for ((v, c), m) in chunk.iter_mut().zip(offs).zip(maxes.iter_mut()) {
                *v += c;
                *m = m.max(*v);
            }
        }
        let max = maxes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sums = [0f32; LANES];
        for chunk in row.chunks_mut(LANES) {
            for (v, s) in chunk.iter_mut().zip(sums.iter_mut()) {
                *v = exp(*v - max);
                *s += *v;
            }
        }
        (max, sums.iter().sum())
    }
}

dispatch! {
    /// `row *= factor`.
    pub fn scale(row: &mut [f32], factor: f32) {
        row.iter_mut().for_each(|v| *v *= factor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn exp_shift_gives_the_log_partition() {
        let mut row = vec![1.0f32, 2.0, 3.0, -50.0];
        let off = [0.5f32, 0.0, -1.0, 0.0];
        let (max, sum) = exp_shift_in_place(&mut row, &off);
        let lse = max + sum.ln();
        scale(&mut row, 1.0 / sum);
        let want = (1.5f64.exp() + 2f64.exp() + 2f64.exp() + (-50f64).exp()).ln();
        assert!((lse as f64 - want).abs() < 1e-6);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((row[1] as f64 - (2.0 - want).exp()).abs() < 1e-6);
    }

    #[test]
    fn adagrad_matches_the_formula() {
        let (mut w, g, mut acc) = (vec![1.0f32; 3], vec![0.5f32, -1.0, 0.0], vec![0.25f32; 3]);
        adagrad(&mut w, &g, &mut acc, 0.1);
        assert_eq!(acc, vec![0.5, 1.25, 0.25]);
        assert!((w[0] - (1.0 - 0.1 * 0.5 / (0.5f32 + 1e-6).sqrt())).abs() < 1e-7);
        assert_eq!(w[2], 1.0);
    }
}
