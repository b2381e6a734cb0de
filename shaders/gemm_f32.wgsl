// Plain f32 tiled GEMM, the baseline the quantized kernels are compared with:
//   y[t, y0 + o] = Σ_k x[t, k] · w[k, o]
// Same tiling as gemm_int.wgsl: 64 tokens × 64 outputs per workgroup, K steps of 32
// staged in workgroup memory, 16×16 threads with 4×4 outputs each. The weight is
// uploaded transposed, [k, n], so tile loads are coalesced.

const TM: u32 = 64u;  // tokens per tile
const TN: u32 = 64u;  // outputs per tile
const TK: u32 = 32u;  // inputs per K step

struct Params {
    n: u32,          // output columns of this weight chunk
    k: u32,          // input width (row stride of x)
    kw: u32,         // = k
    tokens: u32,     // rows of x and y
    group_size: u32, // unused
    groups: u32,     // unused
    act_order: u32,  // unused
    ldy: u32,        // row stride of y (all outputs of the layer)
    y0: u32,         // first output of this chunk within a row of y
    zw: u32,         // unused
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [k, n] (weight transposed)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> xs: array<f32, 2048>;  // [TK, TM]
var<workgroup> ws: array<f32, 2048>;  // [TK, TN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = wid.x * TN;
    let t0 = wid.y * TM;
    var acc: array<f32, 16>;  // [4 tokens, 4 outputs]
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = li; i < TM * TK; i += 256u) {
            let tt = i / TK;
            let kk = i % TK;
            let t = t0 + tt;
            let k = k0 + kk;
            var v = 0.0;
            if (t < p.tokens && k < p.k) {
                v = x[t * p.k + k];
            }
            xs[kk * TM + tt] = v;
        }
        for (var i = li; i < TK * TN; i += 256u) {
            let kk = i / TN;
            let nn = i % TN;
            let k = k0 + kk;
            let o = n0 + nn;
            var v = 0.0;
            if (k < p.k && o < p.n) {
                v = w[k * p.n + o];
            }
            ws[kk * TN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let xb = kk * TM + lid.y * 4u;
            let wb = kk * TN + lid.x * 4u;
            let a = vec4<f32>(xs[xb], xs[xb + 1u], xs[xb + 2u], xs[xb + 3u]);
            let b = vec4<f32>(ws[wb], ws[wb + 1u], ws[wb + 2u], ws[wb + 3u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i * 4u] += a[i] * b.x;
                acc[i * 4u + 1u] += a[i] * b.y;
                acc[i * 4u + 2u] += a[i] * b.z;
                acc[i * 4u + 3u] += a[i] * b.w;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let o = n0 + lid.x * 4u + j;
            if (t < p.tokens && o < p.n) {
                y[t * p.ldy + p.y0 + o] = acc[i * 4u + j];
            }
        }
    }
}
