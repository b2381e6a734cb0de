// Dequantizing GEMV over packed integer codes with f16 arithmetic (adapters with
// shader-f16 only): each packed word's PER_WORD products are dequantized and summed in
// f16, then scaled and accumulated across words in f32, so the sum over the whole input
// never runs in f16. Otherwise identical to gemv_int.wgsl (same bindings and layouts).
//   y[t, y0 + o] = Σ_words scale · f16(Σ_j f16(x) · (q - zero))
enable f16;

override BITS: u32 = 4u;                  // 2, 3, 4 or 8
override PER_WORD: u32 = 32u / BITS;      // codes per u32 word
override MASK: u32 = (1u << BITS) - 1u;

const WG_N: u32 = 32u;   // outputs per workgroup
const WG_K: u32 = 8u;    // input-word slices per workgroup

struct Params {
    n: u32,          // output columns of this weight chunk
    k: u32,          // padded input width = kw · PER_WORD (row stride of x)
    kw: u32,         // packed words per output column
    tokens: u32,     // rows of x and y
    group_size: u32, // input columns per group (k for per-channel); ignored with act_order
    groups: u32,     // groups per output column
    act_order: u32,  // 1: the group of column k is g_idx[k]
    ldy: u32,        // row stride of y (all outputs of the layer)
    y0: u32,         // first output of this chunk within a row of y
    zw: u32,         // words per group in qzeros = ceil(n / PER_WORD)
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<u32>;    // [kw, n]
@group(0) @binding(3) var<storage, read> scales: array<f32>;     // [groups, n]
@group(0) @binding(4) var<storage, read> qzeros: array<u32>;     // [groups, zw]
@group(0) @binding(5) var<storage, read> g_idx: array<u32>;      // [k] (act_order) or [1]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> partial: array<f32, 256>;  // [WG_K, WG_N]

fn zero_point(g: u32, o: u32) -> u32 {
    let word = qzeros[g * p.zw + o / PER_WORD];
    return (word >> ((o % PER_WORD) * BITS)) & MASK;
}

@compute @workgroup_size(32, 8, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = wid.x * WG_N + lid.x;
    let t = wid.y;
    var acc = 0.0;
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        let aligned = p.act_order == 0u && p.group_size % PER_WORD == 0u;
        for (var w = lid.y; w < p.kw; w += WG_K) {
            let word = qweight[w * p.n + o];
            let k0 = w * PER_WORD;
            if (aligned) {
                let g = k0 / p.group_size;
                let z = f16(zero_point(g, o));
                var d = f16(0.0);
                for (var j = 0u; j < PER_WORD; j++) {
                    d = fma(f16(x[xr + k0 + j]), f16((word >> (j * BITS)) & MASK) - z, d);
                }
                acc += scales[g * p.n + o] * f32(d);
            } else {
                for (var j = 0u; j < PER_WORD; j++) {
                    let k = k0 + j;
                    var g = min(k / p.group_size, p.groups - 1u);
                    if (p.act_order != 0u) {
                        g = g_idx[k];
                    }
                    let q = f16((word >> (j * BITS)) & MASK) - f16(zero_point(g, o));
                    acc += scales[g * p.n + o] * f32(f16(x[xr + k]) * q);
                }
            }
        }
    }
    partial[lid.y * WG_N + lid.x] = acc;
    workgroupBarrier();
    if (lid.y == 0u && o < p.n && t < p.tokens) {
        var sum = 0.0;
        for (var s = 0u; s < WG_K; s++) {
            sum += partial[s * WG_N + lid.x];
        }
        y[t * p.ldy + p.y0 + o] = sum;
    }
}
