# Rules of this stage (see ../../../shared/DESIGN.md).
