// Run a tvmcompress export from C++: read raw inputs, run, write raw outputs.
//
//   tvmcompress_run BUNDLE_DIR [--out DIR] [--repeat N] [--device cpu|cuda] [--device-id N]
//                   [INPUT.bin ...]
//
// Inputs are raw little-endian C-order buffers, one file per model input in manifest order;
// with no input files, deterministic values are used (float: ((i % 17) - 8) / 8, integer and
// bool: i % 2). Each output is written to DIR/<name>.bin (default DIR: ./out) as raw bytes.
// --repeat N runs N more times and prints the median latency. --device checks that the bundle
// was compiled for that device (cuda bundles need lib/libtvm_runtime_cuda.so, CUDA 13 and a GPU);
// --device-id picks the GPU.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "tvmcompress.hpp"

namespace {

std::vector<uint8_t> ReadBinary(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw tvmcompress::Error("cannot open input file " + path);
  std::vector<uint8_t> data;
  uint8_t buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  return data;
}

void WriteBinary(const std::string& path, const std::vector<uint8_t>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  bool ok = f && std::fwrite(data.data(), 1, data.size(), f) == data.size();
  if (f) ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw tvmcompress::Error("cannot write " + path);
}

template <typename T>
std::vector<uint8_t> Fill(int64_t n, bool is_float) {
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * sizeof(T));
  T* p = reinterpret_cast<T*>(bytes.data());
  for (int64_t i = 0; i < n; ++i) p[i] = is_float ? static_cast<T>((i % 17) - 8) / 8 : T(i % 2);
  return bytes;
}

std::vector<uint8_t> Deterministic(const tvmcompress::TensorInfo& t) {
  const std::string& d = t.dtype;
  const int64_t n = t.numel();
  if (d == "float32") return Fill<float>(n, true);
  if (d == "float64") return Fill<double>(n, true);
  if (d == "int64") return Fill<int64_t>(n, false);
  if (d == "int32") return Fill<int32_t>(n, false);
  if (d == "int8") return Fill<int8_t>(n, false);
  if (d == "uint8" || d == "bool") return Fill<uint8_t>(n, false);
  throw tvmcompress::Error("no default values for " + t.describe() + "; pass an input file");
}

std::string SafeName(std::string name) {  // output names may hold '/' or ':'
  for (char& c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) c = '_';
  return name.empty() ? "output" : name;
}

int Run(int argc, char** argv) {
  std::string bundle, out_dir = "out", device;
  std::vector<std::string> files;
  int repeat = 0, device_id = 0;
  const std::string usage = std::string("usage: ") + argv[0] +
      " BUNDLE_DIR [--out DIR] [--repeat N] [--device cpu|cuda] [--device-id N] [INPUT.bin ...]\n";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) {
      out_dir = argv[++i];
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(0, std::atoi(argv[++i]));
    } else if (arg == "--device" && i + 1 < argc) {
      device = argv[++i];
    } else if (arg == "--device-id" && i + 1 < argc) {
      device_id = std::max(0, std::atoi(argv[++i]));
    } else if (arg.rfind("--", 0) == 0 || arg == "-h") {
      std::cerr << usage;
      return 2;
    } else if (bundle.empty()) {
      bundle = arg;
    } else {
      files.push_back(arg);
    }
  }
  if (bundle.empty()) {
    std::cerr << usage;
    return 2;
  }
  tvmcompress::Model model(bundle, device, device_id);
  std::cout << "model " << model.directory() << " (" << model.device() << ")\n";
  const char* threads = std::getenv("TVM_NUM_THREADS");  // Model set it, unless the user did
  std::cout << "threads " << (threads ? threads : "TVM's default") << "\n";
  if (!files.empty() && files.size() != model.inputs().size())
    throw tvmcompress::Error("got " + std::to_string(files.size()) + " input file(s), the model takes " +
                             std::to_string(model.inputs().size()) + ": " +
                             tvmcompress::Model::Describe(model.inputs()));
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<tvmcompress::Input> inputs;
  for (size_t i = 0; i < model.inputs().size(); ++i) {
    const auto& spec = model.inputs()[i];
    buffers.push_back(files.empty() ? Deterministic(spec) : ReadBinary(files[i]));
    if (!files.empty() && buffers.back().size() != spec.nbytes())
      throw tvmcompress::Error("input file " + files[i] + " has " +
                               std::to_string(buffers.back().size()) + " bytes; input " +
                               spec.describe() + " needs " + std::to_string(spec.nbytes()));
    inputs.push_back({buffers.back().data(), buffers.back().size(), spec.shape, spec.dtype});
    std::cout << "input  " << spec.describe() << (files.empty() ? " (default values)" : "") << "\n";
  }
  std::vector<tvmcompress::Output> outputs = model.run(inputs);
  ::mkdir(out_dir.c_str(), 0755);
  for (const auto& out : outputs) {
    std::string path = out_dir + "/" + SafeName(out.info.name) + ".bin";
    WriteBinary(path, out.data);
    std::cout << "output " << out.info.describe() << " -> " << path << "\n";
  }
  if (repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < repeat; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      model.run(inputs);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::cout << "median " << ms[ms.size() / 2] << " ms over " << repeat << " runs\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
