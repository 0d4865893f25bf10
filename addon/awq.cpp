// The AWQ int4 ops of include/pagedllm/awq.h from JS (lib/ops.ts validates shapes and dtypes with
// exact messages; here the weight's sizes are checked first, then every pointer range against its
// buffer, and the op checks sizes and dtypes once more).
#include <string>

#include "binding.h"
#include "pagedllm/awq.h"
#include "pagedllm/error.h"

namespace pagedllm::addon {

namespace {

// A non-negative integer field of a params object.
int64_t field(const Napi::Object& o, const char* name, const char* op) {
  const Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d)))
    throw make_error(o.Env(), "ERR_INVALID_ARGUMENT", std::string(op) + " parameter " + name + " must be a non-negative integer");
  return static_cast<int64_t>(d);
}

Napi::Object params(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (i >= info.Length() || !info[i].IsObject())
    throw make_error(info.Env(), "ERR_INVALID_ARGUMENT", std::string(op) + ": expected a params object");
  return info[i].As<Napi::Object>();
}

// The weight at info[i … i + 5] = (qweight, off, qzeros, off, scales, off), sizes from params.
AwqWeight arg_weight(const Napi::CallbackInfo& info, size_t i, const Napi::Object& p, const char* op, const Stream& stream) {
  AwqWeight w{};
  w.in_features = field(p, "inFeatures", op);
  w.out_features = field(p, "outFeatures", op);
  w.group_size = field(p, "groupSize", op);
  w.layout = static_cast<AwqLayout>(p.Has("layout") ? field(p, "layout", op) : 0);
  check_awq_weight(w, op);  // sizes first: the regions below depend on them
  const size_t words = static_cast<size_t>(w.out_features / 8), groups = static_cast<size_t>(w.in_features / w.group_size);
  w.qweight = reinterpret_cast<const int32_t*>(arg_region(info, i, static_cast<size_t>(w.in_features) * words * 4, stream));
  w.qzeros = reinterpret_cast<const int32_t*>(arg_region(info, i + 2, groups * words * 4, stream));
  w.scales = reinterpret_cast<const uint16_t*>(arg_region(info, i + 4, groups * static_cast<size_t>(w.out_features) * 2, stream));
  return w;
}

size_t span(int64_t rows, int64_t stride, int64_t width, DType t) {
  return rows == 0 ? 0 : static_cast<size_t>((rows - 1) * stride + width) * dtype_size(t);
}

// awqLinear(x, xOff, qweight, qwOff, qzeros, qzOff, scales, sOff, bias|null, biasOff, out, outOff,
//           {numTokens, inFeatures, outFeatures, groupSize, xStride, outStride, xDtype, biasDtype, outDtype}, stream)
Napi::Value AwqLinear(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 13).stream;
  const Napi::Object p = params(info, 12, "awqLinear");
  AwqLinearArgs a{};
  a.weight = arg_weight(info, 2, p, "awq_linear", stream);
  a.num_tokens = field(p, "numTokens", "awqLinear");
  a.x_stride = field(p, "xStride", "awqLinear");
  a.out_stride = field(p, "outStride", "awqLinear");
  a.x_dtype = dtype_from_int(static_cast<int32_t>(field(p, "xDtype", "awqLinear")));
  a.bias_dtype = dtype_from_int(static_cast<int32_t>(field(p, "biasDtype", "awqLinear")));
  a.out_dtype = dtype_from_int(static_cast<int32_t>(field(p, "outDtype", "awqLinear")));
  const int64_t K = a.weight.in_features, N = a.weight.out_features;
  a.x = arg_region(info, 0, span(a.num_tokens, a.x_stride, K, a.x_dtype), stream);
  a.bias = arg_region(info, 8, span(1, N, N, a.bias_dtype), stream, true);
  a.out = arg_region(info, 10, span(a.num_tokens, a.out_stride, N, a.out_dtype), stream);
  awq_linear(a, stream);
  return info.Env().Undefined();
}

// awqDequantize(qweight, qwOff, qzeros, qzOff, scales, sOff, out, outOff, {inFeatures, outFeatures, groupSize, outDtype}, stream)
Napi::Value AwqDequantize(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 9).stream;
  const Napi::Object p = params(info, 8, "awqDequantize");
  AwqDequantizeArgs a{};
  a.weight = arg_weight(info, 0, p, "awq_dequantize", stream);
  a.out_dtype = dtype_from_int(static_cast<int32_t>(field(p, "outDtype", "awqDequantize")));
  a.out = arg_region(info, 6, static_cast<size_t>(a.weight.in_features * a.weight.out_features) * dtype_size(a.out_dtype), stream);
  awq_dequantize(a, stream);
  return info.Env().Undefined();
}

// awqRepack(qweight, qwOff, dst, dstOff, {inFeatures, outFeatures}, stream): dst = qweight in the
// slab8 layout (dst may be qweight itself).
Napi::Value AwqRepack(const Napi::CallbackInfo& info) {
  Stream& stream = *NativeStream::From(info, 5).stream;
  const Napi::Object p = params(info, 4, "awqRepack");
  AwqRepackArgs a{};
  a.weight.in_features = field(p, "inFeatures", "awqRepack");
  a.weight.out_features = field(p, "outFeatures", "awqRepack");
  a.weight.group_size = a.weight.in_features;  // (qweight only: zeros and scales stay as they are)
  check_awq_weight(a.weight, "awq_repack");
  const size_t bytes = static_cast<size_t>(a.weight.in_features * (a.weight.out_features / 8)) * 4;
  a.weight.qweight = reinterpret_cast<const int32_t*>(arg_region(info, 0, bytes, stream));
  a.dst = reinterpret_cast<int32_t*>(arg_region(info, 2, bytes, stream));
  awq_repack(a, stream);
  return info.Env().Undefined();
}

}  // namespace

void init_awq(Napi::Env env, Napi::Object exports) {
  exports.Set("awqLinear", Napi::Function::New<Guard<AwqLinear>>(env, "awqLinear"));
  exports.Set("awqDequantize", Napi::Function::New<Guard<AwqDequantize>>(env, "awqDequantize"));
  exports.Set("awqRepack", Napi::Function::New<Guard<AwqRepack>>(env, "awqRepack"));
}

}  // namespace pagedllm::addon
