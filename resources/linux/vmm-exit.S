/*
 * vmm-exit N: ends the VM with verdict N (0-255) through the VMM's exit port 0xf4, from user space:
 * ioperm(2) for the port, then one `outb`. For kernels without /dev/port (Debian's cloud kernel).
 * Prints nothing; if the VM goes on (no exit port), it exits with status 1.
 * Assembled into the initramfs by mkinitramfs.py: `as --64` and `ld -static`, no libc.
 */
        .set SYS_write, 1
        .set SYS_exit, 60
        .set SYS_ioperm, 173
        .set EXIT_PORT, 0xf4

        .text
        .globl _start
_start:
        xor %ebx, %ebx                  /* the verdict */
        cmpq $2, (%rsp)                 /* argc */
        jb usage
        mov 16(%rsp), %rsi              /* argv[1] */
1:      movzbl (%rsi), %eax             /* decimal digits */
        test %al, %al
        jz 2f
        sub $'0', %eax
        cmp $9, %eax
        ja usage
        imul $10, %ebx, %ebx
        add %eax, %ebx
        inc %rsi
        jmp 1b
2:      cmp $255, %ebx
        ja usage
        mov $SYS_ioperm, %eax
        mov $EXIT_PORT, %edi
        mov $1, %esi
        mov $1, %edx
        syscall
        test %rax, %rax
        jnz failed
        mov %bl, %al
        mov $EXIT_PORT, %dx
        outb %al, %dx
failed: mov $SYS_exit, %eax
        mov $1, %edi
        syscall
usage:  mov $SYS_write, %eax
        mov $2, %edi
        lea msg(%rip), %rsi
        mov $msg_len, %edx
        syscall
        mov $SYS_exit, %eax
        mov $2, %edi
        syscall

        .section .rodata
msg:    .ascii "usage: vmm-exit VERDICT (0-255)\n"
        .set msg_len, . - msg
