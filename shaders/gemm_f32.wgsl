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
    ldw: u32,        // row stride of the weight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [k, ldw] (weight transposed)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> xs: array<f32, 2048>;  // [TK, TM]
var<workgroup> ws: array<f32, 2048>;  // [TK, TN]

// y[t, o .. o+3] = v, within bounds.
fn store(t: u32, o: u32, v: vec4<f32>) {
    if (t < p.tokens) {
        for (var j = 0u; j < 4u; j++) {
            if (o + j < p.n) {
                y[t * p.ldy + p.y0 + o + j] = v[j];
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = wid.x * TN;
    let t0 = wid.y * TM;
    // 4 tokens × 4 outputs, one vec4 of outputs per token.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
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
                v = w[k * p.ldw + o];
            }
            ws[kk * TN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let xb = kk * TM + lid.y * 4u;
            let wb = kk * TN + lid.x * 4u;
            let b = vec4<f32>(ws[wb], ws[wb + 1u], ws[wb + 2u], ws[wb + 3u]);
            acc0 = fma(vec4<f32>(xs[xb]), b, acc0);
            acc1 = fma(vec4<f32>(xs[xb + 1u]), b, acc1);
            acc2 = fma(vec4<f32>(xs[xb + 2u]), b, acc2);
            acc3 = fma(vec4<f32>(xs[xb + 3u]), b, acc3);
        }
        workgroupBarrier();
    }
    let tb = t0 + lid.y * 4u;
    store(tb, n0 + lid.x * 4u, acc0);
    store(tb + 1u, n0 + lid.x * 4u, acc1);
    store(tb + 2u, n0 + lid.x * 4u, acc2);
    store(tb + 3u, n0 + lid.x * 4u, acc3);
}
