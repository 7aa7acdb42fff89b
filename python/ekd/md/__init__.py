"""MD systems and LAMMPS runs shared by bench, stability and the tests: periodic boxes of a data
set's molecules (`boxes`) and the one LAMMPS driver (`lammps_driver`)."""
