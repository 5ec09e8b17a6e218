/*
 * A PVH kernel written in assembly: an ELF64 whose XEN_ELFNOTE_PHYS32_ENTRY note names a 32-bit
 * entry point. It checks what the PVH boot ABI promises (EBX -> hvm_start_info with the magic, a
 * command line, an RSDP, a memory map, the modules) and reports on COM1; the verdict on port 0xf4
 * is 0 when every check passed, 1 otherwise.
 * Built by `as --64` and `ld -m elf_x86_64 -Ttext=0x200000`.
 */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                            /* name size: "Xen\0" */
        .long 4                            /* descriptor size */
        .long 18                           /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .balign 4
        .long _start

        .text
        .code32
        .globl _start
_start:
        mov $stack_top, %esp
        mov %ebx, %edi                     /* hvm_start_info */
        xor %ebp, %ebp                     /* failed checks */
        cmpl $0x336ec578, (%edi)           /* magic */
        je 1f
        inc %ebp
        mov $bad_magic, %esi
        call puts
1:      mov $cmdline_msg, %esi
        call puts
        mov 24(%edi), %esi                 /* cmdline_paddr */
        call puts
        mov $newline, %esi
        call puts
        mov 32(%edi), %esi                 /* rsdp_paddr */
        cmpl $0x20445352, (%esi)           /* "RSD " */
        jne 2f
        cmpl $0x20525450, 4(%esi)          /* "PTR " */
        je 3f
2:      inc %ebp
        mov $bad_rsdp, %esi
        call puts
3:      cmpl $0, 48(%edi)                  /* memmap_entries */
        jne 4f
        inc %ebp
        mov $bad_memmap, %esi
        call puts
4:      cmpl $0, 12(%edi)                  /* nr_modules */
        je 5f
        mov $module_msg, %esi
        call puts
        mov 16(%edi), %esi                 /* modlist_paddr -> first module's paddr */
        mov (%esi), %esi
        call puts                          /* the test's module is a NUL-terminated line */
5:      mov $done_msg, %esi
        call puts
        mov %ebp, %eax
        mov $0xf4, %dx
        outl %eax, %dx
6:      hlt
        jmp 6b

        .include "serial.inc"

        .data
cmdline_msg: .asciz "pvh-asm: cmdline: "
newline:     .asciz "\n"
module_msg:  .asciz "pvh-asm: module: "
done_msg:    .asciz "pvh-asm: done\n"
bad_magic:   .asciz "pvh-asm: bad start_info magic\n"
bad_rsdp:    .asciz "pvh-asm: rsdp_paddr does not point at an RSDP\n"
bad_memmap:  .asciz "pvh-asm: empty memory map\n"
        .bss
        .balign 16
        .space 4096
stack_top:
