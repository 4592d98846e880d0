/*
 * inventory.c: a small stock ledger driven by commands on standard input, one command a line.
 *
 *   add NAME CATEGORY QTY PRICE [WxHxD]   QTY is an expression: digits, + - * and parentheses
 *   remove NAME | find NAME | restock NAME QTY | discount NAME PERCENT
 *   list | sort name|value|qty|volume | tree | stats | report CATEGORY
 *
 * Written for c2rust-batch as a function-level translation example: structs (one nested, one linked
 * list, one tree), a tagged union, enums, typedefs, globals, macros, static helpers, self and mutual
 * recursion, and qsort with a comparator chosen through a table of function pointers.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME 24
#define MAX_LINE 256
#define MAX_ARGS 8
#define MAX_DISCOUNT 90
#define CLAMP(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))
#define ARRAY_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define IS_NAME_CHAR(c) (isalnum((unsigned char)(c)) || (c) == '_' || (c) == '-')

typedef long cents_t;

typedef enum { CAT_FOOD, CAT_TOOL, CAT_TOY, CAT_BOOK, CAT_OTHER, CAT_COUNT } Category;

typedef struct {
    cents_t amount;
    int discount_pct;
} Price;

typedef struct {
    int width;
    int height;
    int depth;
} Dims;

typedef struct Item {
    char name[MAX_NAME];
    Category category;
    int quantity;
    Price price;
    Dims dims;
    struct Item *next;
} Item;

typedef struct TreeNode {
    Item *item;
    struct TreeNode *left;
    struct TreeNode *right;
} TreeNode;

typedef enum { VAL_INT, VAL_MONEY, VAL_TEXT } ValueKind;

typedef union {
    long integer;
    cents_t money;
    char text[MAX_NAME];
} ValueData;

typedef struct {
    const char *label;
    ValueKind kind;
    ValueData data;
} Value;

typedef int (*item_cmp)(const void *, const void *);

typedef struct {
    const char *key;
    item_cmp compare;
} SortKey;

/* The quantity parser's cursor: the text and how far it has read. */
typedef struct {
    const char *text;
    int pos;
    int failed;
} Cursor;

static Item *g_head = NULL;
static Item *g_tail = NULL;
static TreeNode *g_root = NULL;
static int g_count = 0;
int g_errors = 0;
static const char *const CATEGORY_NAMES[CAT_COUNT] = {"food", "tool", "toy", "book", "other"};

static void report_error(const char *what, const char *detail) {
    g_errors++;
    printf("error: %s %s\n", what, detail);
}

static const char *category_name(Category category) {
    if (category < 0 || category >= CAT_COUNT) {
        return "?";
    }
    return CATEGORY_NAMES[category];
}

static int parse_category(const char *text, Category *out) {
    for (int i = 0; i < CAT_COUNT; i++) {
        if (strcmp(text, CATEGORY_NAMES[i]) == 0) {
            *out = (Category)i;
            return 1;
        }
    }
    return 0;
}

static int valid_name(const char *text) {
    size_t len = strlen(text);
    if (len == 0 || len >= MAX_NAME) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (!IS_NAME_CHAR(text[i])) {
            return 0;
        }
    }
    return 1;
}

/* ---- quantity expressions: sum -> product -> atom -> (sum), mutually recursive ---- */

static long parse_sum(Cursor *cur);

static void skip_spaces(Cursor *cur) {
    while (cur->text[cur->pos] == ' ') {
        cur->pos++;
    }
}

static long parse_atom(Cursor *cur) {
    skip_spaces(cur);
    char c = cur->text[cur->pos];
    if (c == '(') {
        cur->pos++;
        long inner = parse_sum(cur);
        skip_spaces(cur);
        if (cur->text[cur->pos] != ')') {
            cur->failed = 1;
            return 0;
        }
        cur->pos++;
        return inner;
    }
    if (!isdigit((unsigned char)c)) {
        cur->failed = 1;
        return 0;
    }
    long value = 0;
    while (isdigit((unsigned char)cur->text[cur->pos])) {
        value = value * 10 + (cur->text[cur->pos] - '0');
        if (value > 1000000) {
            cur->failed = 1;
            return 0;
        }
        cur->pos++;
    }
    return value;
}

static long parse_product(Cursor *cur) {
    long value = parse_atom(cur);
    for (;;) {
        skip_spaces(cur);
        if (cur->failed || cur->text[cur->pos] != '*') {
            return value;
        }
        cur->pos++;
        value *= parse_atom(cur);
        if (value > 1000000) {
            cur->failed = 1;
            return 0;
        }
    }
}

static long parse_sum(Cursor *cur) {
    long value = parse_product(cur);
    for (;;) {
        skip_spaces(cur);
        char op = cur->text[cur->pos];
        if (cur->failed || (op != '+' && op != '-')) {
            return value;
        }
        cur->pos++;
        long rhs = parse_product(cur);
        value = op == '+' ? value + rhs : value - rhs;
    }
}

static int parse_quantity(const char *text, int *out) {
    Cursor cur = {text, 0, 0};
    long value = parse_sum(&cur);
    skip_spaces(&cur);
    if (cur.failed || cur.text[cur.pos] != '\0' || value < 0 || value > 1000000) {
        return 0;
    }
    *out = (int)value;
    return 1;
}

/* "12", "12.5" or "12.34" -> cents; nothing else. */
static int parse_money(const char *text, cents_t *out) {
    cents_t whole = 0;
    int i = 0;
    if (!isdigit((unsigned char)text[0])) {
        return 0;
    }
    while (isdigit((unsigned char)text[i])) {
        whole = whole * 10 + (text[i] - '0');
        if (whole > 100000000L) {
            return 0;
        }
        i++;
    }
    cents_t frac = 0;
    if (text[i] == '.') {
        i++;
        int digits = 0;
        while (isdigit((unsigned char)text[i]) && digits < 2) {
            frac = frac * 10 + (text[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0) {
            return 0;
        }
        if (digits == 1) {
            frac *= 10;
        }
    }
    if (text[i] != '\0') {
        return 0;
    }
    *out = whole * 100 + frac;
    return 1;
}

static int parse_dims(const char *text, Dims *out) {
    char tail;
    if (sscanf(text, "%dx%dx%d%c", &out->width, &out->height, &out->depth, &tail) != 3) {
        return 0;
    }
    return out->width > 0 && out->height > 0 && out->depth > 0;
}

static void format_money(cents_t value, char *buf, size_t size) {
    const char *sign = value < 0 ? "-" : "";
    cents_t magnitude = value < 0 ? -value : value;
    snprintf(buf, size, "%s%ld.%02ld", sign, magnitude / 100, magnitude % 100);
}

static cents_t unit_price(const Price *price) {
    return price->amount * (100 - price->discount_pct) / 100;
}

static cents_t item_value(const Item *item) {
    return unit_price(&item->price) * item->quantity;
}

static long item_volume(const Item *item) {
    return (long)item->dims.width * item->dims.height * item->dims.depth;
}

/* ---- the tree of items by name (self-recursive) ---- */

static TreeNode *tree_insert(TreeNode *node, Item *item) {
    if (node == NULL) {
        TreeNode *fresh = malloc(sizeof *fresh);
        if (fresh == NULL) {
            exit(2);
        }
        fresh->item = item;
        fresh->left = NULL;
        fresh->right = NULL;
        return fresh;
    }
    if (strcmp(item->name, node->item->name) < 0) {
        node->left = tree_insert(node->left, item);
    } else {
        node->right = tree_insert(node->right, item);
    }
    return node;
}

static Item *tree_find(const TreeNode *node, const char *name) {
    if (node == NULL) {
        return NULL;
    }
    int order = strcmp(name, node->item->name);
    if (order == 0) {
        return node->item;
    }
    return tree_find(order < 0 ? node->left : node->right, name);
}

static TreeNode *tree_remove(TreeNode *node, const char *name) {
    if (node == NULL) {
        return NULL;
    }
    int order = strcmp(name, node->item->name);
    if (order < 0) {
        node->left = tree_remove(node->left, name);
        return node;
    }
    if (order > 0) {
        node->right = tree_remove(node->right, name);
        return node;
    }
    if (node->left == NULL || node->right == NULL) {
        TreeNode *child = node->left != NULL ? node->left : node->right;
        free(node);
        return child;
    }
    TreeNode *least = node->right;
    while (least->left != NULL) {
        least = least->left;
    }
    node->item = least->item;
    node->right = tree_remove(node->right, least->item->name);
    return node;
}

static int tree_height(const TreeNode *node) {
    if (node == NULL) {
        return 0;
    }
    int left = tree_height(node->left);
    int right = tree_height(node->right);
    return 1 + (left > right ? left : right);
}

static void tree_print(const TreeNode *node, int depth) {
    if (node == NULL) {
        return;
    }
    tree_print(node->left, depth + 1);
    for (int i = 0; i < depth; i++) {
        putchar('.');
    }
    printf("%s\n", node->item->name);
    tree_print(node->right, depth + 1);
}

static void tree_free(TreeNode *node) {
    if (node == NULL) {
        return;
    }
    tree_free(node->left);
    tree_free(node->right);
    free(node);
}

/* ---- the list in insertion order ---- */

static Item *item_new(const char *name, Category category, int quantity, cents_t amount, Dims dims) {
    Item *item = calloc(1, sizeof *item);
    if (item == NULL) {
        exit(2);
    }
    strncpy(item->name, name, MAX_NAME - 1);
    item->category = category;
    item->quantity = quantity;
    item->price.amount = amount;
    item->price.discount_pct = 0;
    item->dims = dims;
    item->next = NULL;
    return item;
}

static void list_append(Item *item) {
    if (g_tail == NULL) {
        g_head = item;
    } else {
        g_tail->next = item;
    }
    g_tail = item;
    g_count++;
}

static void list_unlink(Item *item) {
    Item *prev = NULL;
    for (Item *cur = g_head; cur != NULL; prev = cur, cur = cur->next) {
        if (cur != item) {
            continue;
        }
        if (prev == NULL) {
            g_head = cur->next;
        } else {
            prev->next = cur->next;
        }
        if (g_tail == cur) {
            g_tail = prev;
        }
        g_count--;
        return;
    }
}

static void print_item(const Item *item) {
    char each[32];
    char total[32];
    format_money(unit_price(&item->price), each, sizeof each);
    format_money(item_value(item), total, sizeof total);
    printf("%-10s %-5s qty %4d at %8s = %10s vol %ld", item->name, category_name(item->category),
           item->quantity, each, total, item_volume(item));
    if (item->price.discount_pct > 0) {
        printf(" (-%d%%)", item->price.discount_pct);
    }
    printf("\n");
}

/* ---- sorting through function pointers ---- */

static int cmp_name(const void *a, const void *b) {
    const Item *x = *(const Item *const *)a;
    const Item *y = *(const Item *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_value(const void *a, const void *b) {
    const Item *x = *(const Item *const *)a;
    const Item *y = *(const Item *const *)b;
    cents_t vx = item_value(x);
    cents_t vy = item_value(y);
    if (vx != vy) {
        return vx < vy ? 1 : -1;
    }
    return cmp_name(a, b);
}

static int cmp_quantity(const void *a, const void *b) {
    const Item *x = *(const Item *const *)a;
    const Item *y = *(const Item *const *)b;
    if (x->quantity != y->quantity) {
        return x->quantity < y->quantity ? -1 : 1;
    }
    return cmp_name(a, b);
}

static int cmp_volume(const void *a, const void *b) {
    long vx = item_volume(*(const Item *const *)a);
    long vy = item_volume(*(const Item *const *)b);
    if (vx != vy) {
        return vx < vy ? 1 : -1;
    }
    return cmp_name(a, b);
}

static const SortKey SORT_KEYS[] = {
    {"name", cmp_name},
    {"value", cmp_value},
    {"qty", cmp_quantity},
    {"volume", cmp_volume},
};

static item_cmp find_sort(const char *key) {
    for (int i = 0; i < ARRAY_LEN(SORT_KEYS); i++) {
        if (strcmp(SORT_KEYS[i].key, key) == 0) {
            return SORT_KEYS[i].compare;
        }
    }
    return NULL;
}

static void print_sorted(item_cmp compare) {
    if (g_count == 0) {
        printf("(empty)\n");
        return;
    }
    Item **items = malloc(sizeof(Item *) * (size_t)g_count);
    if (items == NULL) {
        exit(2);
    }
    int n = 0;
    for (Item *cur = g_head; cur != NULL; cur = cur->next) {
        items[n++] = cur;
    }
    qsort(items, (size_t)n, sizeof(Item *), compare);
    for (int i = 0; i < n; i++) {
        print_item(items[i]);
    }
    free(items);
}

/* ---- statistics as tagged values ---- */

static Value value_int(const char *label, long integer) {
    Value v;
    v.label = label;
    v.kind = VAL_INT;
    v.data.integer = integer;
    return v;
}

static Value value_money(const char *label, cents_t money) {
    Value v;
    v.label = label;
    v.kind = VAL_MONEY;
    v.data.money = money;
    return v;
}

static Value value_text(const char *label, const char *text) {
    Value v;
    v.label = label;
    v.kind = VAL_TEXT;
    memset(v.data.text, 0, sizeof v.data.text);
    strncpy(v.data.text, text, MAX_NAME - 1);
    return v;
}

static void print_value(const Value *v) {
    char buf[32];
    switch (v->kind) {
    case VAL_INT:
        printf("%s: %ld\n", v->label, v->data.integer);
        break;
    case VAL_MONEY:
        format_money(v->data.money, buf, sizeof buf);
        printf("%s: %s\n", v->label, buf);
        break;
    case VAL_TEXT:
        printf("%s: %s\n", v->label, v->data.text);
        break;
    }
}

static int collect_stats(Value *out, int capacity, int only_category) {
    long units = 0;
    long items = 0;
    cents_t total = 0;
    const Item *best = NULL;
    for (const Item *cur = g_head; cur != NULL; cur = cur->next) {
        if (only_category >= 0 && (int)cur->category != only_category) {
            continue;
        }
        items++;
        units += cur->quantity;
        total += item_value(cur);
        if (best == NULL || item_value(cur) > item_value(best)) {
            best = cur;
        }
    }
    int n = 0;
    if (n < capacity) out[n++] = value_int("items", items);
    if (n < capacity) out[n++] = value_int("units", units);
    if (n < capacity) out[n++] = value_money("total", total);
    if (n < capacity) out[n++] = value_text("top", best != NULL ? best->name : "-");
    return n;
}

/* ---- commands ---- */

static void cmd_add(char **args, int nargs) {
    Category category;
    int quantity;
    cents_t amount;
    Dims dims = {1, 1, 1};
    if (nargs < 5 || nargs > 6) {
        report_error("usage:", "add NAME CATEGORY QTY PRICE [WxHxD]");
        return;
    }
    if (!valid_name(args[1])) {
        report_error("bad name", args[1]);
        return;
    }
    if (tree_find(g_root, args[1]) != NULL) {
        report_error("duplicate", args[1]);
        return;
    }
    if (!parse_category(args[2], &category)) {
        report_error("unknown category", args[2]);
        return;
    }
    if (!parse_quantity(args[3], &quantity)) {
        report_error("bad quantity", args[3]);
        return;
    }
    if (!parse_money(args[4], &amount)) {
        report_error("bad price", args[4]);
        return;
    }
    if (nargs == 6 && !parse_dims(args[5], &dims)) {
        report_error("bad size", args[5]);
        return;
    }
    Item *item = item_new(args[1], category, quantity, amount, dims);
    list_append(item);
    g_root = tree_insert(g_root, item);
    printf("added %s\n", item->name);
}

static Item *lookup(char **args, int nargs, int wanted) {
    if (nargs != wanted) {
        report_error("usage:", args[0]);
        return NULL;
    }
    Item *item = tree_find(g_root, args[1]);
    if (item == NULL) {
        report_error("no such item", args[1]);
    }
    return item;
}

static void cmd_remove(char **args, int nargs) {
    Item *item = lookup(args, nargs, 2);
    if (item == NULL) {
        return;
    }
    g_root = tree_remove(g_root, item->name);
    list_unlink(item);
    printf("removed %s\n", item->name);
    free(item);
}

static void cmd_restock(char **args, int nargs) {
    int extra;
    Item *item = lookup(args, nargs, 3);
    if (item == NULL) {
        return;
    }
    if (!parse_quantity(args[2], &extra)) {
        report_error("bad quantity", args[2]);
        return;
    }
    item->quantity += extra;
    printf("%s now %d\n", item->name, item->quantity);
}

static void cmd_discount(char **args, int nargs) {
    Item *item = lookup(args, nargs, 3);
    if (item == NULL) {
        return;
    }
    int pct = atoi(args[2]);
    item->price.discount_pct = CLAMP(pct, 0, MAX_DISCOUNT);
    printf("%s discount %d%%\n", item->name, item->price.discount_pct);
}

static void cmd_stats(int only_category) {
    Value values[MAX_ARGS];
    int n = collect_stats(values, ARRAY_LEN(values), only_category);
    for (int i = 0; i < n; i++) {
        print_value(&values[i]);
    }
}

static int split_line(char *line, char **args, int capacity) {
    int n = 0;
    char *token = strtok(line, " \t\r\n");
    while (token != NULL && n < capacity) {
        args[n++] = token;
        token = strtok(NULL, " \t\r\n");
    }
    return token == NULL ? n : -1;
}

static void run_command(char **args, int nargs) {
    const char *name = args[0];
    if (strcmp(name, "add") == 0) {
        cmd_add(args, nargs);
    } else if (strcmp(name, "remove") == 0) {
        cmd_remove(args, nargs);
    } else if (strcmp(name, "find") == 0) {
        Item *item = lookup(args, nargs, 2);
        if (item != NULL) {
            print_item(item);
        }
    } else if (strcmp(name, "restock") == 0) {
        cmd_restock(args, nargs);
    } else if (strcmp(name, "discount") == 0) {
        cmd_discount(args, nargs);
    } else if (strcmp(name, "list") == 0) {
        if (g_head == NULL) {
            printf("(empty)\n");
        }
        for (const Item *cur = g_head; cur != NULL; cur = cur->next) {
            print_item(cur);
        }
    } else if (strcmp(name, "sort") == 0) {
        item_cmp compare = nargs == 2 ? find_sort(args[1]) : NULL;
        if (compare == NULL) {
            report_error("usage:", "sort name|value|qty|volume");
        } else {
            print_sorted(compare);
        }
    } else if (strcmp(name, "tree") == 0) {
        tree_print(g_root, 0);
        printf("height %d\n", tree_height(g_root));
    } else if (strcmp(name, "stats") == 0) {
        cmd_stats(-1);
    } else if (strcmp(name, "report") == 0) {
        Category category;
        if (nargs != 2 || !parse_category(args[1], &category)) {
            report_error("usage:", "report CATEGORY");
        } else {
            cmd_stats((int)category);
        }
    } else {
        report_error("unknown command", name);
    }
}

int main(void) {
    char line[MAX_LINE];
    char *args[MAX_ARGS];
    int lines = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        lines++;
        int nargs = split_line(line, args, MAX_ARGS);
        if (nargs < 0) {
            report_error("too many words on line", "");
            continue;
        }
        if (nargs == 0 || args[0][0] == '#') {
            continue;
        }
        run_command(args, nargs);
    }
    printf("%d lines, %d items, %d errors\n", lines, g_count, g_errors);
    tree_free(g_root);
    while (g_head != NULL) {
        Item *next = g_head->next;
        free(g_head);
        g_head = next;
    }
    return g_errors > 0 ? 1 : 0;
}
