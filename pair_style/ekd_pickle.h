/* ekd_pickle.h — a length check of the pickles inside a TorchScript archive, before libtorch reads
   them. libtorch's unpickler allocates whatever length a string or bytes opcode declares before it
   finds the bytes missing (a damaged 140 kB file asked for 2.8 GB); this walk reads each opcode's
   arguments without building anything and refuses a declared length beyond the record's end.
   Python does the same with pickletools (export/load.py). */

#ifndef EKD_PICKLE_H
#define EKD_PICKLE_H

#include <cstddef>
#include <string>

namespace ekd {

/// "" when every length declared in the pickle `data` fits in its `size` bytes (or the walk
/// reached an opcode it does not know, which the unpickler then judges), else what is wrong.
std::string pickle_length_problem(const unsigned char *data, size_t size);

/// The same for every pickle record (*.pkl, *.debug_pkl) of the archive at `path`: "" or
/// "<record>: <problem>". Throws what libtorch's archive reader throws for a damaged zip.
std::string archive_pickle_problem(const std::string &path);

}    // namespace ekd

#endif
