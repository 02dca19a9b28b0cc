/*
 * rawsys.h - system calls without libc: they return -errno and never touch
 * errno. nsbox-init (built without a libc) uses them, and so does the network
 * hop (net.c), which runs beside the setup child in one address space: with a
 * shared errno, one could overwrite the other's between a failure and its
 * report. NSBOX_HAVE_RAWSYS is defined where they exist (x86_64, aarch64).
 */
#ifndef NSBOX_RAWSYS_H
#define NSBOX_RAWSYS_H

#if defined(__x86_64__)
#define NSBOX_HAVE_RAWSYS 1
static inline long nsbox_raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ __volatile__("syscall"
                         : "=a"(ret)
                         : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                         : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define NSBOX_HAVE_RAWSYS 1
static inline long nsbox_raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ __volatile__("svc #0"
                         : "+r"(x0)
                         : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                         : "memory");
    return x0;
}
#endif

#endif
