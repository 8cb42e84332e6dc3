// tvmcompress.hpp: run a tvmcompress export (model.so + manifest.json) from C++17. Needs only
// the tvm_ffi headers (a bundle's include/); link libtvm_runtime.so and libtvm_ffi.so (its lib/).
// Failures throw tvmcompress::Error. A Model is not thread-safe: use one per thread.
//   tvmcompress::Model model("path/to/bundle");
//   std::vector<float> x(model.inputs()[0].numel());
//   std::vector<tvmcompress::Output> y = model.run({tvmcompress::Input::of(x)});
//   const float* scores = y[0].as<float>();
#pragma once

#include <dlfcn.h>
#include <sched.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

namespace tvmcompress {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/*! \brief Name, static shape and dtype ("float32", "int64", ...) of an input or output. */
struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  DLDataType dl_dtype{};
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return tvm::ffi::GetDataSize(static_cast<size_t>(numel()), dl_dtype); }
  std::string describe() const {
    std::string s = name + ": " + dtype + "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

template <typename T> const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "float32"; }
template <> inline const char* dtype_name<double>() { return "float64"; }
template <> inline const char* dtype_name<int8_t>() { return "int8"; }
template <> inline const char* dtype_name<uint8_t>() { return "uint8"; }
template <> inline const char* dtype_name<int32_t>() { return "int32"; }
template <> inline const char* dtype_name<int64_t>() { return "int64"; }

/*! \brief An input in host memory (C order). Empty shape or dtype: not checked, only size. */
struct Input {
  const void* data = nullptr;
  size_t nbytes = 0;
  std::vector<int64_t> shape = {};
  std::string dtype = "";
  template <typename T>
  static Input of(const std::vector<T>& v, std::vector<int64_t> shape = {}) {
    return Input{v.data(), v.size() * sizeof(T), std::move(shape), dtype_name<T>()};
  }
};

/*! \brief An output copied to host memory (C order, native byte order). */
struct Output {
  TensorInfo info;
  std::vector<uint8_t> data;
  template <typename T> const T* as() const {
    if (info.dtype != dtype_name<T>())
      throw Error("output '" + info.name + "' is " + info.dtype + ", not " + dtype_name<T>());
    return reinterpret_cast<const T*>(data.data());
  }
};

namespace detail {
namespace ffi = tvm::ffi;

inline bool exists(const std::string& path, bool dir) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && (dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
}
inline std::string absolute_dir(const std::string& path) {  // dlopen wants an absolute path
  char* resolved = ::realpath(path.c_str(), nullptr);
  std::string out = resolved ? resolved : "";
  std::free(resolved);
  if (out.empty() || !exists(out, true)) throw Error("bundle directory not found: " + path);
  return out;
}
inline ffi::Any field(const ffi::json::Object& obj, const char* key, const std::string& where) {
  auto value = obj.Get(ffi::String(key));
  if (!value.has_value()) throw Error(where + ": missing field \"" + key + "\"");
  return *value;
}
inline std::vector<TensorInfo> parse_specs(const ffi::json::Object& manifest, const char* key,
                                           const std::string& where) {
  std::vector<TensorInfo> specs;
  for (const ffi::Any& item : field(manifest, key, where).cast<ffi::json::Array>()) {
    auto obj = item.cast<ffi::json::Object>();
    TensorInfo t;
    t.name = field(obj, "name", where).cast<ffi::String>();
    t.dtype = field(obj, "dtype", where).cast<ffi::String>();
    for (const ffi::Any& dim : field(obj, "shape", where).cast<ffi::json::Array>()) {
      auto d = dim.try_cast<int64_t>();
      if (!d) throw Error(where + ": " + key + " '" + t.name + "' has a non-static dimension");
      t.shape.push_back(*d);
    }
    t.dl_dtype = ffi::StringToDLDataType(t.dtype);
    specs.push_back(std::move(t));
  }
  return specs;
}
/*! \brief Physical cores among the CPUs this process may run on (from sysfs; 0 when unknown).
 *  TVM's pool takes half the logical CPUs on x86 when TVM_NUM_THREADS is unset, assuming
 *  hyper-threads: one thread on a 2-core machine without SMT. */
inline int physical_cores() {
  cpu_set_t mask;
  if (::sched_getaffinity(0, sizeof(mask), &mask) != 0) return 0;
  std::set<std::string> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &mask)) continue;
    std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(cpu) +
                    "/topology/thread_siblings_list");
    std::string siblings;
    if (!std::getline(f, siblings)) return 0;
    cores.insert(siblings);
  }
  return static_cast<int>(cores.size());
}
/*! \brief TVM_NUM_THREADS = physical cores unless the user set it (or OMP_NUM_THREADS); TVM
 *  reads it once, when the first parallel kernel runs. Same default as the Python package. */
inline void default_threads() {
  if (std::getenv("TVM_NUM_THREADS") || std::getenv("OMP_NUM_THREADS")) return;
  if (int cores = physical_cores()) ::setenv("TVM_NUM_THREADS", std::to_string(cores).c_str(), 0);
}
}  // namespace detail

class Model {
 public:
  /*! \brief Load the export in `bundle_dir`: manifest.json, model.so (weights.params when
   *  exported with separate weights, lib/ for CUDA). `device` ("cpu", "cuda"; empty: the
   *  manifest's) must be the one the bundle was compiled for; `device_id` picks the GPU. */
  explicit Model(const std::string& bundle_dir, const std::string& device = "",
                 int device_id = 0)
      : dir_(detail::absolute_dir(bundle_dir)) {
    namespace ffi = tvm::ffi;
    detail::default_threads();
    const std::string manifest_path = dir_ + "/manifest.json";
    std::ifstream file(manifest_path, std::ios::binary);
    if (!file) throw Error(dir_ + " is not a tvmcompress export: no readable manifest.json");
    std::stringstream text;
    text << file.rdbuf();
    try {
      ffi::String err;
      ffi::Any parsed = ffi::json::Parse(text.str(), &err);
      if (!err.empty()) throw Error(manifest_path + " is not valid JSON: " + std::string(err));
      auto manifest = parsed.cast<ffi::json::Object>();
      if (detail::field(manifest, "format_version", manifest_path).cast<int64_t>() != 1)
        throw Error(manifest_path + ": unsupported format_version (this header reads 1)");
      library_ = dir_ + "/" + std::string(
          detail::field(manifest, "library", manifest_path).cast<ffi::String>());
      if (auto dev = manifest.Get(ffi::String("device"))) device_ = dev->cast<ffi::String>();
      if (auto arch = manifest.Get(ffi::String("arch"))) arch_ = arch->cast<ffi::String>();
      inputs_ = detail::parse_specs(manifest, "inputs", manifest_path);
      outputs_ = detail::parse_specs(manifest, "outputs", manifest_path);
      if (auto w = manifest.Get(ffi::String("weights"))) ParseWeights(w->cast<ffi::json::Object>());
    } catch (const ffi::Error& e) {
      throw Error(manifest_path + " is malformed: " + e.what());
    }
    if (!detail::exists(library_, false)) throw Error(dir_ + " has a manifest but no " + library_);
    if (arch_ != "?" && arch_ != kHostArch)  // dlopen of a foreign ELF only says "wrong class"
      throw Error(library_ + " is built for " + arch_ + ", but this program runs on " +
                  kHostArch + ": build tvmcompress_run for the bundle's architecture (see its "
                  "README) and run it there, or export the model for this machine");
    if (!device.empty() && device != device_)
      throw Error("device '" + device + "' requested, but " + dir_ + " is compiled for '" +
                  device_ + "': export the model for a " + device + " target preset");
    if (device_ == "cuda") {
      dev_ = DLDevice{kDLCUDA, device_id};
      LoadRuntimePlugin("libtvm_runtime_cuda.so", "the CUDA 13 runtime (libcudart.so.13) and "
                        "the NVIDIA driver (libcuda.so.1)");
    } else if (device_ != "cpu") {
      throw Error("device '" + device_ + "' is not supported by tvmcompress.hpp (cpu, cuda)");
    }
    try {
      ffi::Module exec = ffi::Module::LoadFromFile(library_);
      vm_ = Get(exec, "vm_load_executable")().cast<ffi::Module>();
      if (dev_.device_type == kDLCPU) {
        Get(vm_, "vm_initialization")(static_cast<int>(kDLCPU), 0, kPooled);
      } else {  // the device, then the host CPU that runs shape functions (as relax.VirtualMachine)
        Get(vm_, "vm_initialization")(static_cast<int>(dev_.device_type), dev_.device_id,
                                      kPooled, static_cast<int>(kDLCPU), 0, kPooled);
      }
      main_ = Get(vm_, "main");
      LoadWeights();
      auto alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
      for (const TensorInfo& t : inputs_)
        staged_.push_back(alloc(ffi::Shape(t.shape), t.dl_dtype, dev_, nullptr).cast<ffi::Tensor>());
    } catch (const ffi::Error& e) {
      throw Error("cannot load " + library_ + " (built for " + arch_ + ", device " + device_ +
                  "): " + e.kind() + ": " + e.message());
    }
  }

  const std::vector<TensorInfo>& inputs() const { return inputs_; }
  const std::vector<TensorInfo>& outputs() const { return outputs_; }
  const std::string& device() const { return device_; }
  const std::string& directory() const { return dir_; }

  /*! \brief Run once: inputs in manifest order; outputs copied to host memory. */
  std::vector<Output> run(const std::vector<Input>& inputs) {
    namespace ffi = tvm::ffi;
    if (inputs.size() != inputs_.size())
      throw Error("got " + std::to_string(inputs.size()) + " input(s), the model takes " +
                  std::to_string(inputs_.size()) + ": " + Describe(inputs_));
    for (size_t i = 0; i < inputs.size(); ++i) Check(inputs_[i], inputs[i]);
    try {
      auto copy_in = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
      std::vector<ffi::AnyView> args;
      for (size_t i = 0; i < inputs.size(); ++i) {
        copy_in(staged_[i], const_cast<void*>(inputs[i].data), inputs[i].nbytes);
        args.emplace_back(staged_[i]);
      }
      for (const ffi::Tensor& w : weights_) args.emplace_back(w);
      ffi::Any result;
      main_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
      std::vector<ffi::Any> results;
      if (auto tensor = result.as<ffi::Tensor>()) results.push_back(*tensor);
      else for (const ffi::Any& r : result.cast<ffi::Array<ffi::Any>>()) results.push_back(r);
      if (results.size() != outputs_.size())
        throw Error("the model returned " + std::to_string(results.size()) +
                    " outputs, the manifest lists " + std::to_string(outputs_.size()));
      auto copy_out = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
      std::vector<Output> outputs;
      for (size_t i = 0; i < results.size(); ++i) {
        auto tensor = results[i].cast<ffi::Tensor>();
        Output out{outputs_[i], {}};
        std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
        if (shape != out.info.shape || tensor.dtype() != out.info.dl_dtype)
          throw Error("output '" + out.info.name + "' is " +
                      std::string(ffi::DLDataTypeToString(tensor.dtype())) + " of rank " +
                      std::to_string(shape.size()) + "; the manifest says " + out.info.describe());
        out.data.resize(out.info.nbytes());
        copy_out(tensor, static_cast<void*>(out.data.data()), out.data.size());
        outputs.push_back(std::move(out));
      }
      return outputs;
    } catch (const ffi::Error& e) {
      throw Error("running " + library_ + " failed: " + e.kind() + ": " + e.message());
    }
  }

  static std::string Describe(const std::vector<TensorInfo>& specs) {
    std::string s;
    for (size_t i = 0; i < specs.size(); ++i) s += (i ? ", " : "") + specs[i].describe();
    return s;
  }

 private:
  static constexpr int kPooled = 2;  // relax.VirtualMachine.POOLED_ALLOCATOR

#if defined(__x86_64__)
  static constexpr const char* kHostArch = "x86_64";
#elif defined(__aarch64__)
  static constexpr const char* kHostArch = "aarch64";
#elif defined(__arm__)
  static constexpr const char* kHostArch = "armv7";
#else
  static constexpr const char* kHostArch = "unknown";
#endif

  void ParseWeights(const tvm::ffi::json::Object& entry) {
    namespace ffi = tvm::ffi;
    const std::string where = dir_ + "/manifest.json: weights";
    weights_file_ = dir_ + "/" + std::string(detail::field(entry, "file", where).cast<ffi::String>());
    for (const ffi::Any& name : detail::field(entry, "names", where).cast<ffi::json::Array>())
      weight_names_.push_back(std::string(name.cast<ffi::String>()));
  }

  // Weights exported separately (weights.params, TVM's param-dict format) are passed to main
  // after the inputs, in manifest order, on the model's device.
  void LoadWeights() {
    namespace ffi = tvm::ffi;
    if (weight_names_.empty()) return;
    if (!detail::exists(weights_file_, false))
      throw Error("weights file " + weights_file_ + " is missing: this bundle was exported with "
                  "separate weights; copy weights.params next to model.so");
    auto params = ffi::Function::GetGlobalRequired("runtime.LoadParamsFromFile")(
        ffi::String(weights_file_)).cast<ffi::Map<ffi::String, ffi::Tensor>>();
    auto alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
    auto copy = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromTo");
    for (const std::string& name : weight_names_) {
      auto found = params.find(ffi::String(name));
      if (found == params.end())
        throw Error("weights file " + weights_file_ + " has no weight '" + name +
                    "': it does not belong to this model.so");
      ffi::Tensor host = (*found).second;
      if (dev_.device_type == kDLCPU) {
        weights_.push_back(host);
        continue;
      }
      ffi::Shape shape(std::vector<int64_t>(host.shape().begin(), host.shape().end()));
      ffi::Tensor on_device = alloc(shape, host.dtype(), dev_, nullptr).cast<ffi::Tensor>();
      copy(host, on_device);
      weights_.push_back(on_device);
    }
  }

  static tvm::ffi::Function Get(const tvm::ffi::Module& module, const char* name) {
    auto f = module->GetFunction(name);
    if (!f.has_value()) throw Error(std::string("the module has no function ") + name);
    return *f;
  }

  static void Check(const TensorInfo& spec, const Input& in) {
    if (in.data == nullptr) throw Error("input '" + spec.name + "' is a null pointer");
    if (!in.dtype.empty() && in.dtype != spec.dtype)
      throw Error("input '" + spec.name + "' is " + in.dtype + ", expected " + spec.describe());
    if (!in.shape.empty() && in.shape != spec.shape)
      throw Error("input '" + spec.name + "' has the wrong shape, expected " + spec.describe());
    if (in.nbytes != spec.nbytes())
      throw Error("input '" + spec.name + "' has " + std::to_string(in.nbytes) + " bytes, " +
                  "expected " + std::to_string(spec.nbytes()) + " (" + spec.describe() + ")");
  }

  // Device code runs through a runtime plugin that registers itself when loaded: the bundle's
  // lib/ copy first, else the dynamic linker's search path.
  void LoadRuntimePlugin(const std::string& name, const std::string& needs) {
    std::string path = dir_ + "/lib/" + name;
    if (!detail::exists(path, false)) path = name;
    if (::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr)
      throw Error("cannot load " + name + " for device " + device_ + ": " + ::dlerror() +
                  "; it needs " + needs);
  }

  std::string dir_, library_, device_ = "cpu", arch_ = "?";
  DLDevice dev_{kDLCPU, 0};
  std::vector<TensorInfo> inputs_, outputs_;
  tvm::ffi::Module vm_{tvm::ffi::UnsafeInit{}};
  tvm::ffi::Function main_;
  std::vector<tvm::ffi::Tensor> staged_, weights_;
  std::string weights_file_;
  std::vector<std::string> weight_names_;
};

}  // namespace tvmcompress
