/* Minimal Cortex-M start-up for edgewise's emulator builds (qemu mps2-an386, Cortex-M4).
 * The vector table holds the initial stack pointer and the reset handler, which hands over to
 * newlib's _start (rdimon: semihosting for stdout and exit). */
#include <stdint.h>

extern uint32_t __stack_top;
extern void _start(void);

void ew_reset_handler(void);
void ew_fault_handler(void);

void ew_reset_handler(void)
{
#if defined(__ARM_FP)
    /* a hard-float build: grant full access to the FPU (CP10, CP11) before any floating-point instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb");
#endif
    _start();
    for (;;) {
    }
}

void ew_fault_handler(void)
{
    for (;;) {
    }
}

__attribute__((section(".isr_vector"), used))
static void (*const ew_vectors[16])(void) = {
    (void (*)(void))(&__stack_top), ew_reset_handler, ew_fault_handler, ew_fault_handler,
    ew_fault_handler, ew_fault_handler, ew_fault_handler, 0, 0, 0, 0,
    ew_fault_handler, ew_fault_handler, 0, ew_fault_handler, ew_fault_handler,
};
