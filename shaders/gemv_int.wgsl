// Dequantizing GEMV over packed integer codes (int4 and int8; also 2- and 3-bit).
//   y[t, y0 + o] = Σ_k x[t, k] · scale[g(k), o] · (q[k, o] - zero[g(k), o])
// One token per workgroup row (workgroup_id.y); used for 1 to a few tokens.
//
// Weight layout (equal to GPTQ `qweight` for 2, 4 and 8 bits when ldw = n): codes packed
// along the input dim, PER_WORD = 32 / BITS codes per u32, code j of a word at bits
// [j·BITS, (j+1)·BITS), LSB first; word (w, o) at index w·ldw + o (k-major, outputs
// contiguous, ldw = n rounded up to 4). Each thread reads one vec4<u32> = 4 outputs ×
// PER_WORD inputs per step, so a row of 8 threads reads 128 contiguous bytes and every x
// value loaded serves 4 outputs. Zero points are the real zero (GPTQ v2 convention),
// packed like GPTQ `qzeros` along the outputs; scales are f32.
// Codes become floats with the exponent trick: bits 0x4B000000 | q are the f32 2^23 + q,
// and subtracting 2^23 + zero gives q - zero exactly, in one add.
// A workgroup is 8 threads (32 outputs) × 32 slices of the input words, summed at the end.

override BITS: u32 = 4u;                  // 2, 3, 4 or 8
override PER_WORD: u32 = 32u / BITS;      // codes per u32 word
override MASK: u32 = (1u << BITS) - 1u;

const WG_N: u32 = 8u;    // threads along the outputs (4 outputs each)
const WG_K: u32 = 32u;   // input-word slices per workgroup
const MAGIC: f32 = 8388608.0;  // 2^23, the f32 whose low mantissa bits hold q

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
    zw: u32,         // words per group in qzeros = ceil(ldw / PER_WORD)
    ldw: u32,        // row stride of qweight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<vec4<u32>>; // [kw, ldw / 4]
@group(0) @binding(3) var<storage, read> scales: array<vec4<f32>>;  // [groups, ldw / 4]
@group(0) @binding(4) var<storage, read> qzeros: array<u32>;        // [groups, zw]
@group(0) @binding(5) var<storage, read> g_idx: array<u32>;         // [k] (act_order) or [1]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // [tokens, ldy]

var<workgroup> partial: array<vec4<f32>, 256>;  // [WG_K, WG_N]

// MAGIC + zero point of outputs o .. o+3 in group g.
fn zeros4(g: u32, o: u32) -> vec4<f32> {
    var z: vec4<f32>;
    for (var i = 0u; i < 4u; i++) {
        let oi = o + i;
        z[i] = MAGIC + f32((qzeros[g * p.zw + oi / PER_WORD] >> ((oi % PER_WORD) * BITS)) & MASK);
    }
    return z;
}

fn codes(word: vec4<u32>, j: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(((word >> vec4<u32>(j * BITS)) & vec4<u32>(MASK)) | vec4<u32>(0x4B000000u));
}

@compute @workgroup_size(8, 32, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = (wid.x * WG_N + lid.x) * 4u;
    let t = wid.y;
    var acc = vec4<f32>(0.0);
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        let row = p.ldw / 4u;
        let c = o / 4u;
        // Groups that start on word boundaries: one scale and zero per word.
        let aligned = p.act_order == 0u && p.group_size % PER_WORD == 0u;
        for (var w = lid.y; w < p.kw; w += WG_K) {
            let word = qweight[w * row + c];
            let k0 = w * PER_WORD;
            if (aligned) {
                let g = k0 / p.group_size;
                let z = zeros4(g, o);
                var d = vec4<f32>(0.0);
                for (var j = 0u; j < PER_WORD; j++) {
                    d = fma(vec4<f32>(x[xr + k0 + j]), codes(word, j) - z, d);
                }
                acc = fma(scales[g * row + c], d, acc);
            } else {
                for (var j = 0u; j < PER_WORD; j++) {
                    let k = k0 + j;
                    var g = min(k / p.group_size, p.groups - 1u);
                    if (p.act_order != 0u) {
                        g = g_idx[k];
                    }
                    let wv = scales[g * row + c] * (codes(word, j) - zeros4(g, o));
                    acc = fma(vec4<f32>(x[xr + k]), wv, acc);
                }
            }
        }
    }
    partial[lid.y * WG_N + lid.x] = acc;
    workgroupBarrier();
    if (lid.y == 0u && o < p.n && t < p.tokens) {
        var sum = vec4<f32>(0.0);
        for (var s = 0u; s < WG_K; s++) {
            sum += partial[s * WG_N + lid.x];
        }
        for (var i = 0u; i < 4u; i++) {
            if (o + i < p.n) {
                y[t * p.ldy + p.y0 + o + i] = sum[i];
            }
        }
    }
}
