#ifndef CSPIRV_H
#define CSPIRV_H
// Validation and reflection of untrusted SPIR-V compute modules, over two well-kept libraries:
// SPIRV-Tools' validator (the reference validator the Vulkan validation layers run) and
// SPIRV-Cross's C API for reflection. Both are linked statically (Debian ships them as static
// archives), so the daemon needs nothing at run time beyond libstdc++.
//
// The shim fills plain C structs so that Swift never touches a C++ object, and bounds every
// count: a module that declares more than these maxima is refused by the caller.
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    TETHER_SPV_MAX_BINDINGS = 64,
    TETHER_SPV_MAX_SPECS = 64,
    TETHER_SPV_MAX_CAPABILITIES = 64,
    TETHER_SPV_NAME_BYTES = 64,
};

typedef enum {
    TETHER_SPV_STORAGE_BUFFER = 0,
    TETHER_SPV_UNIFORM_BUFFER = 1,
} tether_spv_binding_kind;

typedef struct {
    uint32_t set;
    uint32_t binding;
    uint32_t kind;          // tether_spv_binding_kind
    uint32_t array_dimensions;  // > 0: an array of descriptors
    uint64_t min_bytes;     // the block's declared size; a trailing runtime array counted as empty
    uint64_t runtime_stride;  // bytes per element of a trailing runtime array, 0 if none
    char name[TETHER_SPV_NAME_BYTES];
} tether_spv_binding;

typedef enum {
    TETHER_SPV_BOOL = 0,
    TETHER_SPV_INT32 = 1,
    TETHER_SPV_UINT32 = 2,
    TETHER_SPV_FLOAT32 = 3,
    TETHER_SPV_INT64 = 4,
    TETHER_SPV_UINT64 = 5,
    TETHER_SPV_FLOAT64 = 6,
    TETHER_SPV_OTHER = 7,
} tether_spv_scalar;

typedef struct {
    uint32_t constant_id;
    uint32_t type;          // tether_spv_scalar
    uint64_t default_bits;  // the default value's bit pattern (low 32 bits for 32-bit types)
    char name[TETHER_SPV_NAME_BYTES];
} tether_spv_spec;

typedef struct {
    char entry[TETHER_SPV_NAME_BYTES];
    uint32_t spirv_version;         // 0x00MMmm00, from the header
    uint32_t local_size[3];         // the default local size (0: an expression of spec constants)
    uint32_t local_size_spec_id[3]; // the spec constant id that overrides it, or UINT32_MAX
    uint32_t push_constant_bytes;   // declared size of the push-constant block, 0 if none
    uint32_t push_constant_blocks;  // how many push-constant blocks the entry point uses
    uint32_t uses_num_workgroups;   // the entry point reads gl_NumWorkGroups
    uint32_t binding_count;
    tether_spv_binding bindings[TETHER_SPV_MAX_BINDINGS];
    uint32_t spec_count;
    tether_spv_spec specs[TETHER_SPV_MAX_SPECS];
    uint32_t capability_count;
    uint32_t capabilities[TETHER_SPV_MAX_CAPABILITIES];
    // The first resource that is not a storage or uniform buffer (an image, a sampler, ...), if any.
    char unsupported_resource[TETHER_SPV_NAME_BYTES];
    char unsupported_kind[32];
    uint32_t too_many;  // a count above the maxima: bindings, spec constants or capabilities
} tether_spv_module;

// Validates `words` for a Vulkan 1.`vulkan_minor` device (2 or 3). Returns 0 when valid; else 1
// with the validator's diagnostic in `error`.
int tether_spirv_validate(const uint32_t *words, size_t count, int vulkan_minor, char *error, size_t error_len);

// One specialization constant's value for `tether_spirv_specialize`: its SpecId and bit pattern
// (`words` 1 for 32-bit types and bools, 2 for 64-bit ones, low word first).
typedef struct {
    uint32_t constant_id;
    uint32_t words;
    uint32_t bits[2];
} tether_spv_value;

// Specializes a validated module the way a driver would (SPIRV-Tools' optimizer: set the given
// values, freeze every specialization constant, fold the expressions that use them), so that what
// is checked afterwards — the local size, shared memory, block sizes — is what will run. On
// success returns 0 and a malloc'ed module in *out (free it with tether_spirv_free); else 1 with
// a sentence in `error`.
int tether_spirv_specialize(const uint32_t *words, size_t count, int vulkan_minor, const tether_spv_value *values,
                            size_t value_count, uint32_t **out, size_t *out_count, char *error, size_t error_len);
void tether_spirv_free(uint32_t *words);

// The workgroup (shared) memory a specialized module declares, in bytes, laid out with the
// natural (std430-like) alignment drivers use. Returns 0 on success; 1 with a sentence in `error`
// when a size still depends on a specialization constant or a type has no size.
int tether_spirv_workgroup_bytes(const uint32_t *words, size_t count, uint64_t *bytes, char *error, size_t error_len);

// Reflects a module that passed validation. `entry` NULL or "" picks the one GLCompute entry
// point. Returns 0 on success; else 1 with a sentence in `error`.
int tether_spirv_reflect(const uint32_t *words, size_t count, const char *entry, tether_spv_module *out,
                         char *error, size_t error_len);
#ifdef __cplusplus
}
#endif
#endif
