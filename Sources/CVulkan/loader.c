#define _GNU_SOURCE
#include "CVulkan.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <xf86drm.h>

PFN_vkGetInstanceProcAddr tether_vulkan_load(char *error, int error_len) {
    void *lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(error, error_len, "%s", dlerror());
        return NULL;
    }
    PFN_vkGetInstanceProcAddr gipa = (PFN_vkGetInstanceProcAddr)dlsym(lib, "vkGetInstanceProcAddr");
    if (!gipa) snprintf(error, error_len, "libvulkan.so.1 has no vkGetInstanceProcAddr");
    // The library stays loaded for the life of the process: drivers keep threads and atexit hooks.
    return gipa;
}

typedef int (*drm_get_devices2_fn)(uint32_t, drmDevicePtr *, int);
typedef void (*drm_free_devices_fn)(drmDevicePtr *, int);

int tether_drm_enumerate(tether_drm_device *out, int max, char *error, int error_len) {
    void *lib = dlopen("libdrm.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(error, error_len, "%s", dlerror());
        return -1;
    }
    drm_get_devices2_fn get = (drm_get_devices2_fn)dlsym(lib, "drmGetDevices2");
    drm_free_devices_fn release = (drm_free_devices_fn)dlsym(lib, "drmFreeDevices");
    if (!get || !release) {
        snprintf(error, error_len, "libdrm.so.2 lacks drmGetDevices2");
        return -1;
    }
    drmDevicePtr devices[32];
    int n = get(0, devices, 32);
    if (n < 0) n = 0;  // no /dev/dri at all: simply no devices
    int count = 0;
    for (int i = 0; i < n && count < max; i++) {
        drmDevicePtr d = devices[i];
        if (!(d->available_nodes & (1 << DRM_NODE_RENDER))) continue;
        tether_drm_device *o = &out[count++];
        memset(o, 0, sizeof(*o));
        snprintf(o->render_node, sizeof(o->render_node), "%s", d->nodes[DRM_NODE_RENDER]);
        if (d->available_nodes & (1 << DRM_NODE_PRIMARY))
            snprintf(o->primary_node, sizeof(o->primary_node), "%s", d->nodes[DRM_NODE_PRIMARY]);
        o->bus_type = d->bustype;
        if (d->bustype == DRM_BUS_PCI && d->deviceinfo.pci) {
            o->vendor_id = d->deviceinfo.pci->vendor_id;
            o->device_id = d->deviceinfo.pci->device_id;
        }
    }
    release(devices, n);
    return count;
}
