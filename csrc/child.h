/* child.h - the entry of the setup child, shared by spawn.c and child.c only. */
#ifndef NSBOX_CHILD_H
#define NSBOX_CHILD_H
#include "sys.h"
NSBOX_HIDDEN int nsbox_child_main(void *arg);
#endif
