#ifndef CVULKAN_H
#define CVULKAN_H
// Vulkan without prototypes: libvulkan.so.1 is dlopen()ed at run time so one binary runs where no
// Vulkan loader exists (it falls back to the software backend). Every entry point comes from
// vkGetInstanceProcAddr / vkGetDeviceProcAddr.
#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

// Loads libvulkan.so.1 and returns vkGetInstanceProcAddr, or NULL with a reason in `error`.
PFN_vkGetInstanceProcAddr tether_vulkan_load(char *error, int error_len);

// libdrm, also dlopen()ed: a description of one DRM device that has a render node.
typedef struct {
    char render_node[64];
    char primary_node[64];
    int bus_type;  // DRM_BUS_* value
    unsigned vendor_id;
    unsigned device_id;
} tether_drm_device;

// Enumerates DRM devices with render nodes through libdrm's drmGetDevices2. Returns the count
// (at most `max`), or -1 with a reason in `error` (libdrm missing).
int tether_drm_enumerate(tether_drm_device *out, int max, char *error, int error_len);
#endif
