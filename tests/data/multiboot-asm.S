/*
 * A multiboot v1 kernel written in plain assembly, independent of the Rust guest runtime: it checks
 * the boot magic, prints its command line on COM1 (polling the line status register as a real
 * driver must) and then obeys the first command word it finds: "exit=N" writes the digit N to the
 * exit port 0xf4, "crash" triple-faults, "hang" spins forever, "poweroff" enters ACPI S5 through the
 * FADT's sleep control register (port 0x600), "reset" resets through the i8042, "echo" copies
 * serial input to serial output up to a '!' and then writes 0; with none it writes 0 to the exit
 * port.
 * Built as an ELF32 by `as --32` and `ld -m elf_i386 -Ttext=0x200000`.
 */
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0x00000003          /* page-align modules, memory info */
        .section .text
        .globl _start
        .align 4
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

_start:
        mov $stack_top, %esp
        cmp $0x2badb002, %eax
        jne bad_magic
        mov %ebx, %edi                     /* multiboot info */
        mov $hello, %esi
        call puts
        testl $4, (%edi)                   /* cmdline present? */
        jz no_cmdline
        mov 16(%edi), %esi
        call puts
        mov $newline, %esi
        call puts
        /* find "exit=" and parse one decimal digit */
        mov 16(%edi), %esi
find:   movb (%esi), %al
        test %al, %al
        jz no_cmdline
        cmpl $0x73617263, (%esi)           /* "cras", as in "crash" */
        je crash
        cmpl $0x676e6168, (%esi)           /* "hang" */
        je hang
        cmpl $0x65776f70, (%esi)           /* "powe", as in "poweroff" */
        je poweroff
        cmpl $0x65736572, (%esi)           /* "rese", as in "reset" */
        je reset
        cmpl $0x6f686365, (%esi)           /* "echo" */
        je echo
        cmpl $0x74697865, (%esi)           /* "exit" */
        jne next
        cmpb $'=', 4(%esi)
        jne next
        movzbl 5(%esi), %eax
        sub $'0', %eax
        jmp out
next:   inc %esi
        jmp find
no_cmdline:
        xor %eax, %eax
out:    mov $0xf4, %dx
        outl %eax, %dx
        hlt
crash:  lidt empty_idt                    /* no gates: the divide error escalates to a triple fault */
        xor %ecx, %ecx
        div %ecx
hang:   jmp hang
poweroff:                                  /* ACPI S5: SLP_TYP 5 in bits 4:2, SLP_EN bit 5 */
        mov $0x600, %dx
        mov $0x34, %al
        outb %al, %dx
        jmp hang
echo:   mov $0x3fd, %dx                    /* copy COM1 input to COM1 output until a '!' */
1:      inb %dx, %al
        test $1, %al                       /* line status: data ready */
        jz 1b
        mov $0x3f8, %dx
        inb %dx, %al
        cmp $'!', %al
        je 2f
        mov %al, echo_buf
        mov $echo_buf, %esi
        call puts
        jmp echo
2:      mov $newline, %esi
        call puts
        xor %eax, %eax
        jmp out
reset:  mov $0x64, %dx                     /* i8042: pulse the CPU reset line */
        mov $0xfe, %al
        outb %al, %dx
        jmp hang
bad_magic:
        mov $magic_msg, %esi
        call puts
        mov $7, %eax
        jmp out

        .include "serial.inc"

        .section .data
echo_buf:   .byte 0, 0
empty_idt:  .word 0
            .long 0
hello:      .asciz "multiboot-asm: cmdline: "
newline:    .asciz "\n"
magic_msg:  .asciz "multiboot-asm: bad boot magic\n"
        .section .bss
        .align 16
        .space 4096
stack_top:
