# Ctrl-C inside long nogil kernels: the signal check between blocks of rows.
cdef int check_interrupt() except -1 nogil
