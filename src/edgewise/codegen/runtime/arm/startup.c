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
