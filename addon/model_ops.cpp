// The model ops of include/pagedllm/model_ops.h from JS (lib/ops.ts validates shapes and dtypes
// with exact messages; here every pointer range is checked again against its buffer, and the op
// checks sizes and dtypes once more).
#include <string>

#include "binding.h"
#include "pagedllm/error.h"
#include "pagedllm/model_ops.h"
#include "pagedllm/sampling.h"

namespace pagedllm::addon {

namespace {

// Reads the fields of a params object.
class Params {
 public:
  Params(const Napi::CallbackInfo& info, size_t i, const char* op) : env_(info.Env()), op_(op) {
    if (i >= info.Length() || !info[i].IsObject())
      throw make_error(env_, "ERR_INVALID_ARGUMENT", std::string(op) + ": expected a params object");
    o_ = info[i].As<Napi::Object>();
  }
  int64_t count(const char* name) const {  // a non-negative integer below 2^53
    const Napi::Value v = o_.Get(name);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d)))
      throw make_error(env_, "ERR_INVALID_ARGUMENT", std::string(op_) + " parameter " + name + " must be a non-negative integer");
    return static_cast<int64_t>(d);
  }
  DType dtype(const char* name) const { return dtype_from_int(static_cast<int32_t>(count(name))); }
  float number(const char* name) const {
    const Napi::Value v = o_.Get(name);
    if (!v.IsNumber()) throw make_error(env_, "ERR_INVALID_ARGUMENT", std::string(op_) + " parameter " + name + " must be a number");
    return static_cast<float>(v.As<Napi::Number>().DoubleValue());
  }

 private:
  Napi::Env env_;
  const char* op_;
  Napi::Object o_;
};

// Bytes spanned by `rows` rows of `width` elements, `stride` elements apart.
size_t span(int64_t rows, int64_t stride, int64_t width, DType t) {
  return rows == 0 ? 0 : static_cast<size_t>((rows - 1) * stride + width) * dtype_size(t);
}

// embedding(ids, idsOff, weight, weightOff, out, outOff,
//           {numTokens, vocabSize, hiddenSize, weightDtype, outDtype}, stream)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 7).stream;
  const Params p(info, 6, "embedding");
  EmbeddingArgs a{};
  a.num_tokens = p.count("numTokens");
  a.vocab_size = p.count("vocabSize");
  a.hidden_size = p.count("hiddenSize");
  a.weight_dtype = p.dtype("weightDtype");
  a.out_dtype = p.dtype("outDtype");
  a.ids = reinterpret_cast<const int32_t*>(arg_region(info, 0, static_cast<size_t>(a.num_tokens) * 4, stream));
  a.weight = arg_region(info, 2, span(a.vocab_size, a.hidden_size, a.hidden_size, a.weight_dtype), stream);
  a.out = arg_region(info, 4, span(a.num_tokens, a.hidden_size, a.hidden_size, a.out_dtype), stream);
  embedding(a, stream);
  return info.Env().Undefined();
}

// rmsNorm(x, xOff, residual|null, residualOff, weight, weightOff, out, outOff,
//         {numTokens, hiddenSize, xStride, residualStride, outStride, xDtype, residualDtype, weightDtype, outDtype, eps}, stream)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 9).stream;
  const Params p(info, 8, "rmsNorm");
  RmsNormArgs a{};
  a.num_tokens = p.count("numTokens");
  a.hidden_size = p.count("hiddenSize");
  a.x_stride = p.count("xStride");
  a.residual_stride = p.count("residualStride");
  a.out_stride = p.count("outStride");
  a.x_dtype = p.dtype("xDtype");
  a.residual_dtype = p.dtype("residualDtype");
  a.weight_dtype = p.dtype("weightDtype");
  a.out_dtype = p.dtype("outDtype");
  a.eps = p.number("eps");
  a.x = arg_region(info, 0, span(a.num_tokens, a.x_stride, a.hidden_size, a.x_dtype), stream);
  a.residual = arg_region(info, 2, span(a.num_tokens, a.residual_stride, a.hidden_size, a.residual_dtype), stream, true);
  a.weight = arg_region(info, 4, span(1, a.hidden_size, a.hidden_size, a.weight_dtype), stream);
  a.out = arg_region(info, 6, span(a.num_tokens, a.out_stride, a.hidden_size, a.out_dtype), stream);
  rms_norm(a, stream);
  return info.Env().Undefined();
}

// rope(query, queryOff, key|null, keyOff, positions, positionsOff, invFreq, invFreqOff,
//      {numTokens, numHeads, numKvHeads, headSize, rotaryDim, queryStride, keyStride, dtype}, stream)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 9).stream;
  const Params p(info, 8, "rope");
  RopeArgs a{};
  a.num_tokens = p.count("numTokens");
  a.num_heads = p.count("numHeads");
  a.num_kv_heads = p.count("numKvHeads");
  a.head_size = p.count("headSize");
  a.rotary_dim = p.count("rotaryDim");
  a.query_stride = p.count("queryStride");
  a.key_stride = p.count("keyStride");
  a.dtype = p.dtype("dtype");
  a.query = arg_region(info, 0, span(a.num_tokens, a.query_stride, a.num_heads * a.head_size, a.dtype), stream);
  a.key = arg_region(info, 2, span(a.num_tokens, a.key_stride, a.num_kv_heads * a.head_size, a.dtype), stream, true);
  a.positions = reinterpret_cast<const int32_t*>(arg_region(info, 4, static_cast<size_t>(a.num_tokens) * 4, stream));
  a.inv_freq = reinterpret_cast<const float*>(arg_region(info, 6, static_cast<size_t>(a.rotary_dim / 2) * 4, stream));
  rope(a, stream);
  return info.Env().Undefined();
}

// siluMul(x, xOff, out, outOff, {numTokens, intermediateSize, xStride, dtype}, stream)
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 5).stream;
  const Params p(info, 4, "siluMul");
  SiluMulArgs a{};
  a.num_tokens = p.count("numTokens");
  a.intermediate_size = p.count("intermediateSize");
  a.x_stride = p.count("xStride");
  a.dtype = p.dtype("dtype");
  a.x = arg_region(info, 0, span(a.num_tokens, a.x_stride, 2 * a.intermediate_size, a.dtype), stream);
  a.out = arg_region(info, 2, span(a.num_tokens, a.intermediate_size, a.intermediate_size, a.dtype), stream);
  silu_mul(a, stream);
  return info.Env().Undefined();
}

// add(a, aOff, b, bOff, out, outOff, n, dtype, stream)
Napi::Value Add(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 8).stream;
  AddArgs a{};
  a.n = arg_int(info, 6, "n");
  a.dtype = dtype_from_int(static_cast<int32_t>(arg_int(info, 7, "dtype")));
  const size_t bytes = static_cast<size_t>(a.n) * dtype_size(a.dtype);
  a.a = arg_region(info, 0, bytes, stream);
  a.b = arg_region(info, 2, bytes, stream);
  a.out = arg_region(info, 4, bytes, stream);
  add(a, stream);
  return info.Env().Undefined();
}

// linear(x, xOff, weight, weightOff, bias|null, biasOff, out, outOff,
//        {numTokens, inFeatures, outFeatures, xStride, outStride, xDtype, weightDtype, biasDtype, outDtype}, stream)
Napi::Value Linear(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 9).stream;
  const Params p(info, 8, "linear");
  LinearArgs a{};
  a.num_tokens = p.count("numTokens");
  a.in_features = p.count("inFeatures");
  a.out_features = p.count("outFeatures");
  a.x_stride = p.count("xStride");
  a.out_stride = p.count("outStride");
  a.x_dtype = p.dtype("xDtype");
  a.weight_dtype = p.dtype("weightDtype");
  a.bias_dtype = p.dtype("biasDtype");
  a.out_dtype = p.dtype("outDtype");
  a.x = arg_region(info, 0, span(a.num_tokens, a.x_stride, a.in_features, a.x_dtype), stream);
  a.weight = arg_region(info, 2, span(a.out_features, a.in_features, a.in_features, a.weight_dtype), stream);
  a.bias = arg_region(info, 4, span(1, a.out_features, a.out_features, a.bias_dtype), stream, true);
  a.out = arg_region(info, 6, span(a.num_tokens, a.out_stride, a.out_features, a.out_dtype), stream);
  linear(a, stream);
  return info.Env().Undefined();
}

// sampleTokens(logits, logitsOff, params, paramsOff, history|null, historyOff, tokenIds, tokenIdsOff,
//              logprobs|null, logprobsOff, {numRows, logitsStride, vocabSize, numSamples, numHistory}, stream)
Napi::Value SampleTokens(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 11).stream;
  const Params p(info, 10, "sampleTokens");
  SampleArgs a{};
  a.num_rows = p.count("numRows");
  a.logits_stride = p.count("logitsStride");
  a.vocab_size = p.count("vocabSize");
  a.num_samples = p.count("numSamples");
  a.num_history = p.count("numHistory");
  a.logits = reinterpret_cast<const float*>(arg_region(info, 0, span(a.num_rows, a.logits_stride, a.vocab_size, DType::Float32), stream));
  a.params = reinterpret_cast<const SampleParams*>(arg_region(info, 2, static_cast<size_t>(a.num_samples) * sizeof(SampleParams), stream));
  a.history = reinterpret_cast<const int32_t*>(arg_region(info, 4, static_cast<size_t>(a.num_history) * 8, stream, true));
  a.token_ids = reinterpret_cast<int32_t*>(arg_region(info, 6, static_cast<size_t>(a.num_samples) * 4, stream));
  a.logprobs = reinterpret_cast<float*>(arg_region(info, 8, static_cast<size_t>(a.num_samples) * 4, stream, true));
  sample_tokens(a, stream);
  return info.Env().Undefined();
}

// cpuSimd() → "avx2" | "portable": the CPU kernels' instruction set.
Napi::Value CpuSimdName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), cpu_simd_name(cpu_simd())); }

}  // namespace

void init_model_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding", Napi::Function::New<Guard<Embedding>>(env, "embedding"));
  exports.Set("rmsNorm", Napi::Function::New<Guard<RmsNorm>>(env, "rmsNorm"));
  exports.Set("rope", Napi::Function::New<Guard<Rope>>(env, "rope"));
  exports.Set("siluMul", Napi::Function::New<Guard<SiluMul>>(env, "siluMul"));
  exports.Set("add", Napi::Function::New<Guard<Add>>(env, "add"));
  exports.Set("linear", Napi::Function::New<Guard<Linear>>(env, "linear"));
  exports.Set("sampleTokens", Napi::Function::New<Guard<SampleTokens>>(env, "sampleTokens"));
  exports.Set("cpuSimd", Napi::Function::New<Guard<CpuSimdName>>(env, "cpuSimd"));
}

}  // namespace pagedllm::addon
