// The two checks that need C++ APIs: specializing a module with SPIRV-Tools' optimizer, and
// measuring its workgroup memory with SPIRV-Cross's parsed IR. Both run on modules that already
// passed the validator; every exception stays inside this file.
#include "CSPIRV.h"

#include <spirv-tools/optimizer.hpp>
#include <spirv_cross/spirv_cross.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

void say(char *error, size_t len, const std::string &text) { std::snprintf(error, len, "%s", text.c_str()); }

// Natural layout of a type: (size, alignment) in bytes, std430-like, as drivers lay out shared
// memory. Returns false for a type without a fixed size.
struct Layout {
    uint64_t size;
    uint64_t align;
};

class WorkgroupMeasure : public spirv_cross::Compiler {
  public:
    using spirv_cross::Compiler::Compiler;

    bool layout(const spirv_cross::SPIRType &type, Layout &out, int depth = 0) {
        using spirv_cross::SPIRType;
        if (depth > 64) return false;
        Layout element{};
        if (!type.array.empty()) {
            // The outermost dimension is the last; strip it and lay out the rest as the element.
            if (!type.array_size_literal.back() || type.array.back() == 0) return false;
            spirv_cross::SPIRType inner = type;
            uint64_t count = type.array.back();
            inner.array.pop_back();
            inner.array_size_literal.pop_back();
            if (!layout(inner, element, depth + 1)) return false;
            uint64_t stride = (element.size + element.align - 1) / element.align * element.align;
            if (count > (uint64_t(1) << 40) / (stride ? stride : 1)) return false;
            out = {stride * count, element.align};
            return true;
        }
        if (type.basetype == SPIRType::Struct) {
            uint64_t offset = 0, align = 1;
            for (auto member : type.member_types) {
                Layout m{};
                if (!layout(get<spirv_cross::SPIRType>(member), m, depth + 1)) return false;
                offset = (offset + m.align - 1) / m.align * m.align + m.size;
                if (offset > (uint64_t(1) << 40)) return false;
                align = m.align > align ? m.align : align;
            }
            out = {(offset + align - 1) / align * align, align};
            return true;
        }
        uint64_t scalar;
        switch (type.basetype) {
        case SPIRType::Boolean: scalar = 4; break;
        case SPIRType::SByte: case SPIRType::UByte: case SPIRType::Short: case SPIRType::UShort:
        case SPIRType::Int: case SPIRType::UInt: case SPIRType::Int64: case SPIRType::UInt64:
        case SPIRType::Half: case SPIRType::Float: case SPIRType::Double:
            scalar = type.width / 8;
            break;
        default: return false;
        }
        uint64_t lanes = type.vecsize == 3 ? 4 : type.vecsize;
        uint64_t column = scalar * lanes;
        out = {column * type.columns, column};
        return true;
    }

    bool total(uint64_t &bytes) {
        bytes = 0;
        bool ok = true;
        ir.for_each_typed_id<spirv_cross::SPIRVariable>([&](uint32_t, const spirv_cross::SPIRVariable &var) {
            if (var.storage != spv::StorageClassWorkgroup || !ok) return;
            Layout l{};
            if (!layout(get<spirv_cross::SPIRType>(var.basetype), l)) {
                ok = false;
                return;
            }
            bytes += (l.size + 15) / 16 * 16;
        });
        return ok;
    }
};

}  // namespace

extern "C" int tether_spirv_specialize(const uint32_t *words, size_t count, int vulkan_minor,
                                       const tether_spv_value *values, size_t value_count, uint32_t **out,
                                       size_t *out_count, char *error, size_t error_len) {
    try {
        std::unordered_map<uint32_t, std::vector<uint32_t>> defaults;
        for (size_t i = 0; i < value_count; i++) {
            const tether_spv_value &v = values[i];
            defaults[v.constant_id] = std::vector<uint32_t>(v.bits, v.bits + (v.words == 2 ? 2 : 1));
        }
        spvtools::Optimizer optimizer(vulkan_minor >= 3 ? SPV_ENV_VULKAN_1_3 : SPV_ENV_VULKAN_1_2);
        std::string messages;
        optimizer.SetMessageConsumer([&](spv_message_level_t, const char *, const spv_position_t &, const char *m) {
            if (messages.size() < 512) messages += m ? m : "";
        });
        optimizer.RegisterPass(spvtools::CreateSetSpecConstantDefaultValuePass(defaults))
            .RegisterPass(spvtools::CreateFreezeSpecConstantValuePass())
            .RegisterPass(spvtools::CreateFoldSpecConstantOpAndCompositePass());
        std::vector<uint32_t> result;
        spvtools::OptimizerOptions options;
        options.set_run_validator(false);  // validated already; the caller validates the result again
        if (!optimizer.Run(words, count, &result, options)) {
            say(error, error_len, "SPIRV-Tools could not specialize the module" + (messages.empty() ? "" : ": " + messages));
            return 1;
        }
        uint32_t *copy = static_cast<uint32_t *>(std::malloc(result.size() * sizeof(uint32_t)));
        if (!copy) {
            say(error, error_len, "out of memory specializing the module");
            return 1;
        }
        std::memcpy(copy, result.data(), result.size() * sizeof(uint32_t));
        *out = copy;
        *out_count = result.size();
        return 0;
    } catch (const std::exception &e) {
        say(error, error_len, std::string("SPIRV-Tools could not specialize the module: ") + e.what());
    } catch (...) {
        say(error, error_len, "SPIRV-Tools could not specialize the module");
    }
    return 1;
}

extern "C" void tether_spirv_free(uint32_t *words) { std::free(words); }

extern "C" int tether_spirv_workgroup_bytes(const uint32_t *words, size_t count, uint64_t *bytes, char *error,
                                            size_t error_len) {
    try {
        WorkgroupMeasure measure(words, count);
        if (!measure.total(*bytes)) {
            say(error, error_len, "a workgroup (shared) variable has no fixed size once specialized");
            return 1;
        }
        return 0;
    } catch (const std::exception &e) {
        say(error, error_len, std::string("SPIRV-Cross could not measure the module's shared memory: ") + e.what());
    } catch (...) {
        say(error, error_len, "SPIRV-Cross could not measure the module's shared memory");
    }
    return 1;
}
